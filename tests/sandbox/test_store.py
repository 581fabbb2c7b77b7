"""The pure rules of the sandbox: store, validation, faults, request log, called directly."""

from __future__ import annotations

import random
import re

import pytest

from sync_worker.sandbox.app import RequestLog
from sync_worker.sandbox.faults import FaultConfig, FaultInjector, TokenBucket
from sync_worker.sandbox.store import (
    ApiError,
    CustomerPatch,
    CustomerStore,
    ListParams,
    iso_ms,
    parse_list_params,
    parse_patch,
)
from tests.fixtures.clock import Clock


@pytest.fixture
def clock() -> Clock:
    return Clock(1_760_000_000.0)


@pytest.fixture
def store(clock: Clock) -> CustomerStore:
    return CustomerStore(clock=clock, rng=random.Random(7))


def status_of(call: object, *args: object) -> int:
    assert callable(call)
    with pytest.raises(ApiError) as caught:
        call(*args)
    return caught.value.status


def test_iso_ms_has_milliseconds_and_z() -> None:
    assert iso_ms(1_736_935_200_123) == "2025-01-15T10:00:00.123Z"
    assert iso_ms(0) == "1970-01-01T00:00:00.000Z"


def test_ids_increase_even_when_the_clock_stalls_or_steps_back(
    store: CustomerStore, clock: Clock
) -> None:
    ids = [c.id for c in store.seed(50)]
    clock.now -= 3600
    ids += [c.id for c in store.seed(50, start=51)]
    assert ids == sorted(ids)
    assert len(set(ids)) == 100
    assert all(re.fullmatch(r"cus_[0-9a-z]{26}", i) for i in ids)


def test_ids_keep_increasing_across_clear(store: CustomerStore) -> None:
    before = store.seed(1)[0].id
    store.clear()
    assert len(store) == 0
    assert store.seed(1)[0].id > before


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ([], 400),
        (None, 400),
        ("name", 400),
        ({"email": "x@y.tw"}, 400),
        ({"nickname": "x"}, 400),
        ({"name": ""}, 400),
        ({"name": "名" * 256}, 400),
        ({"name": None}, 400),
        ({"name": 5}, 400),
        ({"external_id": 5}, 400),
        ({"external_id": "has space"}, 422),
        ({"external_id": ""}, 422),
        ({"external_id": "用戶"}, 422),
        ({"metadata": []}, 400),
        ({"metadata": "x"}, 400),
        # A type error is reported before a malformed external id.
        ({"external_id": "bad id", "metadata": 1}, 400),
    ],
)
def test_parse_patch_refuses(body: object, status: int) -> None:
    assert status_of(parse_patch, body) == status


def test_parse_patch_accepts_the_documented_fields() -> None:
    patch = parse_patch({"name": "名" * 255, "external_id": "a-Z_9", "metadata": {"k": 1}})
    assert patch == CustomerPatch(
        name="名" * 255, has_external_id=True, external_id="a-Z_9", metadata={"k": 1}
    )
    unbind = parse_patch({"external_id": None})
    assert unbind.has_external_id
    assert unbind.external_id is None
    assert not parse_patch({}).has_external_id


def test_name_length_counts_code_points_not_bytes_or_utf16_units() -> None:
    assert parse_patch({"name": "😀" * 255}).name == "😀" * 255
    assert status_of(parse_patch, {"name": "😀" * 256}) == 400


@pytest.mark.parametrize(
    "query",
    [
        *[{"limit": "0"}, {"limit": "101"}, {"limit": "-1"}, {"limit": "x"}, {"limit": "1.5"}],
        *[{"limit": ""}, {"status": "active"}, {"status": "DELETED"}],
    ],
)
def test_parse_list_params_refuses(query: dict[str, str]) -> None:
    assert status_of(parse_list_params, query) == 400


def test_parse_list_params_defaults() -> None:
    assert parse_list_params({}) == ListParams(limit=10)
    assert parse_list_params({"limit": "100", "status": "BANNED"}).limit == 100


def test_list_pages_in_id_order_with_filters(store: CustomerStore) -> None:
    created = store.create_many(
        {"email": f"u{n}@x.tw", "status": "BANNED" if n % 3 == 0 else "ACTIVE"} for n in range(10)
    )
    banned = [c.id for c in created if c.status == "BANNED"]
    page = store.list(ListParams(limit=2, status="BANNED"))
    assert [c.id for c in page.data] == banned[:2]
    assert page.has_more
    assert page.next_cursor == banned[1]
    # A cursor need not be in the filtered list: an ACTIVE id positions a BANNED page.
    rest = store.list(ListParams(limit=10, status="BANNED", starting_after=created[1].id))
    assert [c.id for c in rest.data] == banned[1:]
    assert not rest.has_more
    assert rest.next_cursor is None
    assert [c.id for c in store.list(ListParams(email="u4@x.tw")).data] == [created[4].id]
    assert store.list(ListParams(email="U4@x.tw")).data == []
    assert store.list(ListParams(email="u4@x.tw", status="BANNED")).data == []


def test_list_refuses_an_unknown_cursor(store: CustomerStore) -> None:
    store.seed(2)
    assert status_of(store.list, ListParams(starting_after="cus_nope")) == 400


def test_update_moves_the_external_id_index(store: CustomerStore) -> None:
    first, second = store.seed(2)
    store.update(CustomerPatch(has_external_id=True, external_id="moved"), customer_id=first.id)
    assert store.get_by_external_id("moved").id == first.id
    assert status_of(store.get_by_external_id, "user_1") == 404
    # The freed id can be taken by another customer.
    store.update(CustomerPatch(has_external_id=True, external_id="user_1"), external_id="user_2")
    assert store.get(second.id).external_id == "user_1"


def test_conflict_changes_nothing(store: CustomerStore) -> None:
    first, _ = store.seed(2)
    patch = CustomerPatch(name="新", has_external_id=True, external_id="user_2")
    assert status_of(lambda: store.update(patch, customer_id=first.id)) == 409
    assert store.get(first.id) == first


def test_rebinding_to_its_own_external_id_is_not_a_conflict(store: CustomerStore) -> None:
    store.seed(1)
    patch = CustomerPatch(has_external_id=True, external_id="user_1")
    assert store.update(patch, external_id="user_1").external_id == "user_1"


def test_updated_at_moves_forward_even_within_one_millisecond(store: CustomerStore) -> None:
    (customer,) = store.seed(1)
    first = store.update(CustomerPatch(name="a"), customer_id=customer.id)
    second = store.update(CustomerPatch(name="b"), customer_id=customer.id)
    assert customer.updated_ms < first.updated_ms < second.updated_ms
    assert second.created_ms == customer.created_ms


def test_metadata_is_replaced_as_a_whole(store: CustomerStore) -> None:
    (customer,) = store.create_many([{"email": "a@x.tw", "metadata": {"a": 1, "b": 2}}])
    updated = store.update(CustomerPatch(metadata={"c": 3}), customer_id=customer.id)
    assert updated.metadata == {"c": 3}


def test_update_of_an_unknown_customer_is_404(store: CustomerStore) -> None:
    assert status_of(lambda: store.update(CustomerPatch(), customer_id="cus_x")) == 404
    assert status_of(lambda: store.update(CustomerPatch(), external_id="nobody")) == 404


@pytest.mark.parametrize(
    ("specs", "status"),
    [
        ([{"email": "a@x.tw"}, {"email": "a@x.tw"}], 409),
        ([{"email": "a@x.tw", "external_id": "e"}, {"email": "b@x.tw", "external_id": "e"}], 409),
        ([{"email": "a@x.tw", "external_id": "bad id"}], 422),
        ([{"email": "not-an-address"}], 400),
        ([{"email": "a@x.tw", "status": "GONE"}], 400),
        ([{"email": "a@x.tw", "plan": "pro"}], 400),
    ],
)
def test_create_many_is_all_or_nothing(
    store: CustomerStore, specs: list[dict[str, object]], status: int
) -> None:
    assert status_of(store.create_many, specs) == status
    assert len(store) == 0


def test_token_bucket_allows_one_second_of_requests_then_refills(clock: Clock) -> None:
    bucket = TokenBucket(4, clock=clock)
    assert [bucket.take() for _ in range(4)] == [0, 0, 0, 0]
    assert bucket.take() == pytest.approx(0.25)
    clock.now += 0.5
    assert bucket.take() == 0
    assert bucket.take() == 0
    assert bucket.take() > 0


def test_fault_config_validation() -> None:
    for bad in [{"error_rate": 1.5}, {"latency_ms": -1}, {"outage": "yes"}, {"boom": 1}]:
        assert status_of(FaultConfig.from_json, bad) == 400
    assert status_of(FaultConfig.from_json, {"scripts": {"u": [418]}}) == 400
    config = FaultConfig.from_json({"scripts": {"u": ["ok", 500]}})
    assert config.scripts == {"u": [200, 500]}
    merged = FaultConfig.from_json({"outage": True}, base=config)
    assert merged.outage
    assert merged.scripts == {"u": [200, 500]}


def test_scripts_are_consumed_one_per_request() -> None:
    injector = FaultInjector(
        FaultConfig(scripts={"u1": [500, 429, 200, 404]}, retry_after_seconds=9)
    )
    results = [injector.after_auth("u1") for _ in range(5)]
    assert [None if r is None else r.status for r in results] == [500, 429, None, 404, None]
    assert results[1] is not None
    assert results[1].headers == {"Retry-After": "9"}
    assert injector.after_auth("u2") is None
    assert injector.snapshot().scripts == {}


def test_error_rate_is_repeatable_with_a_seed() -> None:
    def draws() -> list[bool]:
        injector = FaultInjector(FaultConfig(error_rate=0.5), rng=random.Random(1))
        return [injector.after_auth(None) is not None for _ in range(200)]

    first = draws()
    assert first == draws()
    assert 60 < sum(first) < 140


def test_request_log_is_bounded_and_filters() -> None:
    log = RequestLog(maxlen=3)
    for n in range(5):
        seq = log.next_seq()
        method = "PATCH" if n % 2 else "GET"
        log.append({"seq": seq, "method": method, "external_id": f"u{n}", "status": 200})
    assert [e["seq"] for e in log.query()] == [3, 4, 5]
    assert [e["seq"] for e in log.query(since=3)] == [4, 5]
    assert [e["seq"] for e in log.query(method="PATCH")] == [4]
    assert [e["seq"] for e in log.query(external_id="u4")] == [5]
    assert [e["seq"] for e in log.query(limit=1)] == [3]
    log.clear()
    assert log.next_seq() == 6
    log.clear(restart=True)
    assert log.next_seq() == 1
