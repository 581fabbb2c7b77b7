"""The comparison inside Redis (page_script.py) against its reference, drift.compare_page."""

from __future__ import annotations

import json
from typing import Any

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sync_worker import redis_keys as keys
from sync_worker.intake.events import UserEvent
from sync_worker.pipeline.ledger import Ledger
from sync_worker.pipeline.pending import PendingStore
from sync_worker.reconcile.drift import Counts, bindable, compare_page, fields_compared
from sync_worker.reconcile.page_script import MalformedPage, PageScript, Record
from sync_worker.recur.models import ListedCustomer

SEEN = keys.reconcile_seen("rc_test")

# Names: any text (no lone surrogates, which are not UTF-8) or CJK.
names = st.text(st.characters(exclude_categories=("Cs",)), max_size=8) | st.text(
    st.sampled_from("測試用戶王小明李"), min_size=1, max_size=6
)
# JSON as Recur and the ledger carry it. Left out, as page_script.py documents: booleans (Python
# has True == 1, JSON does not), empty lists (cjson decodes [] like {}), integers past 2**53.
leaves = (
    st.none()
    | st.integers(min_value=-(2**53), max_value=2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | names
)
values = st.recursive(
    leaves,
    lambda inner: (
        st.lists(inner, min_size=1, max_size=3)
        | st.dictionaries(st.text(max_size=3), inner, max_size=3)
    ),
    max_leaves=8,
)
metadatas = st.none() | st.dictionaries(st.text(max_size=4), values, max_size=3)
emails = st.from_regex(r"[a-zA-Z]{1,4}@[a-z]{1,3}\.tw", fullmatch=True)


Case = tuple[list[ListedCustomer], dict[str, dict[str, Any]], dict[str, str]]


@st.composite
def page_and_ledger(draw: st.DrawFn) -> Case:
    """Customers (some without an external id, some fields left out of the answer), ledger
    entries (same, drifted or absent) and emails intake saw beyond the ledger's."""
    users = draw(st.lists(st.sampled_from([f"u{n}" for n in range(8)]), unique=True))
    customers: list[ListedCustomer] = []
    ledger: dict[str, dict[str, Any]] = {}
    for n, user in enumerate(users):
        name, metadata, email = draw(st.none() | names), draw(metadatas), draw(emails)
        customer = ListedCustomer(
            id=f"cus_{n}", email=email, name=name, external_id=user, metadata=metadata
        )
        # An answer may leave a field out (Recur never returns metadata): unknown, not drift,
        # whatever the ledger holds; null, when sent, is a value.
        if draw(st.booleans()):
            del customer["name"]
        if draw(st.booleans()):
            del customer["metadata"]
        customers.append(customer)
        if draw(st.booleans()):
            continue  # unknown to the ledger
        fields: dict[str, Any] = {}
        for field, have, other in (
            ("name", name, names),
            ("metadata", metadata, metadatas | st.just({})),
            ("email", email, emails | st.just(email.swapcase())),
        ):
            choice = draw(st.sampled_from(["same", "other", "absent"]))
            if choice != "absent":
                fields[field] = have if choice == "same" else draw(other)
        ledger[user] = fields  # may be empty: an entry that exists with none of these fields
    customers += [ListedCustomer(id="cus_x", email="nobody@x.example", name="no id")] * draw(
        st.integers(0, 2)
    )
    # Customers Checkout made (no external id) whose email may lead to a user (the index is
    # ASCII-lowercased): bindable when the ledger's email is theirs exactly, the user was not
    # moved, and there is something to send.
    seen_emails: dict[str, str] = {}
    for n in draw(st.lists(st.integers(0, 3), unique=True)):
        user, email = f"b{n}", f"b{n}@bind.tw"
        customer = ListedCustomer(
            id=f"cus_b{n}", email=draw(st.sampled_from([email, f"B{n}@Bind.TW"]))
        )
        unbound = draw(st.sampled_from(["null", "absent", "empty"]))
        if unbound != "absent":
            customer["external_id"] = None if unbound == "null" else ""
        customers.append(customer)
        fields = {}
        ledger_email = draw(st.sampled_from(["same", "upper", "other", "absent"]))
        if ledger_email != "absent":
            fields["email"] = {"same": email, "upper": email.upper(), "other": "x" + email}[
                ledger_email
            ]
        if draw(st.booleans()):
            fields["name"] = draw(names.filter(bool))
        if draw(st.booleans()):
            fields["metadata"] = draw(metadatas)
        moved = draw(st.sampled_from(["no", "itself", "elsewhere", "unbound"]))
        if moved != "no":
            fields["external_id"] = {"itself": user, "elsewhere": "b9", "unbound": None}[moved]
        if draw(st.booleans()):
            ledger[user] = fields
        if draw(st.booleans()):
            seen_emails[email] = draw(st.sampled_from([user, "b9"]))  # as intake recorded it
    return customers, ledger, seen_emails


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(case=page_and_ledger(), repair=st.booleans())
def test_the_script_counts_drifts_and_repairs_as_compare_page(
    redis_client: redis.Redis, case: Case, repair: bool
) -> None:
    customers, entries, seen_emails = case
    redis_client.flushdb()
    ledger = Ledger(redis_client)
    for user, fields in entries.items():
        ledger.seed(user, fields, ts_ms=1_700_000_000_000)
    for email, user in seen_emails.items():
        redis_client.hset(keys.EMAIL_USERS, email, user)
    ids = [user for c in customers if (user := c.get("external_id"))]
    by_email = redis_client.hgetall(keys.EMAIL_USERS)
    expected_counts = Counts()
    expected = compare_page(customers, ledger.get_many(ids), expected_counts)
    binds = bindable(customers, by_email, ledger.get_many(list(entries)), expected_counts)
    # Nothing is pending here, so every drifted or bindable user is merged back (or would be).
    expected_counts.enqueued = len(expected) + len(binds)

    counts = Counts()
    script = _script(redis_client)
    drifted = script.compare(_body(customers), counts, seen=SEEN, record=None, repair=repair)

    assert drifted == expected
    assert counts == expected_counts
    assert redis_client.smembers(SEEN) == set(ids) | set(binds)
    restored = {
        user: {name: _pending_field(redis_client, user, name) for name in drift}
        for user, drift in (expected | binds).items()
    }
    if repair:
        assert restored == {
            user: {name: (state.value, state.ts_ms) for name, state in drift.items()}
            for user, drift in (expected | binds).items()
        }
        assert redis_client.zrange(keys.DUE, 0, -1) == sorted(expected | binds)
    else:
        assert redis_client.keys(keys.PENDING + "*") == []
        assert redis_client.zcard(keys.DUE) == 0


def test_a_field_left_out_of_the_answer_is_unknown_and_null_is_a_value(
    redis_client: redis.Redis,
) -> None:
    ledger = Ledger(redis_client)
    for user in ("u1", "u2", "u3"):
        ledger.seed(user, {"name": "applied", "metadata": {"plan": "pro"}}, ts_ms=1_000)
    page = [
        ListedCustomer(id="c1", email="a@x.tw", external_id="u1", name="applied"),
        ListedCustomer(id="c2", email="b@x.tw", external_id="u2"),
        ListedCustomer(id="c3", email="c@x.tw", external_id="u3", name=None, metadata=None),
    ]
    counts = Counts()

    drifted = _script(redis_client).compare(_body(page), counts, seen=SEEN, record=None)

    # u1, u2: metadata (and u2's name) not returned, so not compared; u3 answered null for both.
    assert {user: sorted(drift) for user, drift in drifted.items()} == {"u3": ["metadata", "name"]}
    assert (counts.in_sync, counts.drifted, counts.enqueued) == (2, 1, 1)
    assert (counts.compared_name, counts.compared_metadata) == (2, 1)
    assert fields_compared(counts) == ["name", "metadata"]
    assert fields_compared(Counts(compared_name=3)) == ["name"]


def test_intake_and_import_index_emails_as_lua_lowercases_them(
    redis_client: redis.Redis,
) -> None:
    pending = PendingStore(
        redis_client,
        window_seconds=2.0,
        max_wait_seconds=30.0,
        dedup_ttl_seconds=3600,
        lease_seconds=60.0,
    )
    pending.accept(UserEvent("evt_1", "user.updated", "u1", 2_000, {"email": "Old@X.tw"}))
    pending.accept(UserEvent("evt_2", "user.updated", "u1", 3_000, {"email": "New@X.tw"}))
    pending.accept(UserEvent("evt_0", "user.updated", "u1", 1_000, {"email": "Stale@X.tw"}))
    Ledger(redis_client).seed("u2", {"name": "n", "email": "ÉCOLE@X.TW"})

    assert redis_client.hgetall(keys.EMAIL_USERS) == {
        "old@x.tw": "u1",
        "new@x.tw": "u1",
        "École@x.tw": "u2",
    }
    assert keys.email_field("ÉCOLE@X.TW") == "École@x.tw"


def test_a_newer_pending_field_is_left_to_win(redis_client: redis.Redis) -> None:
    Ledger(redis_client).seed("u1", {"name": "applied"}, ts_ms=1_000)
    pending = PendingStore(
        redis_client,
        window_seconds=2.0,
        max_wait_seconds=30.0,
        dedup_ttl_seconds=3600,
        lease_seconds=60.0,
    )
    pending.accept(UserEvent("evt_1", "user.updated", "u1", 2_000, {"name": "newest"}))
    counts = Counts()

    drifted = _script(redis_client).compare(
        _body([ListedCustomer(id="c1", email="a@x.tw", name="edited in Recur", external_id="u1")]),
        counts,
        seen=SEEN,
        record=None,
    )

    assert list(drifted) == ["u1"]
    assert (counts.drifted, counts.enqueued, counts.left_to_pending) == (1, 0, 1)
    assert _pending_field(redis_client, "u1", "name") == ("newest", 2_000)


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b'{"data": 7}',
        b'{"data": [7]}',
        b'{"data": [{"id": "c1", "external_id": "u1"}]}',
        b'{"data": [{"id": "c1", "email": "a@x.tw", "external_id": 7}]}',
        b'{"data": [{"id": "c1", "email": "a@x.tw", "external_id": "u1", "name": []}]}',
        b'{"data": [{"id": "c1", "email": "a@x.tw", "external_id": "u1", "metadata": "x"}]}',
    ],
)
def test_a_malformed_page_is_refused_before_anything_is_written(
    redis_client: redis.Redis, body: bytes
) -> None:
    Ledger(redis_client).seed("u1", {"name": "applied"}, ts_ms=1_000)
    before = sorted(redis_client.keys("*"))
    record = Record(["run_id", "rc_test", "cursor", "cus_9"], {"pages": 1})

    with pytest.raises(MalformedPage, match="not the documented shape"):
        _script(redis_client).compare(body, Counts(), seen=SEEN, record=record)

    assert sorted(redis_client.keys("*")) == before


def test_the_script_is_loaded_again_after_redis_forgot_it(redis_client: redis.Redis) -> None:
    page = _body([ListedCustomer(id="c1", email="a@x.tw", external_id="u1")])
    script = _script(redis_client)
    script.compare(page, Counts(), seen=SEEN, record=None)
    redis_client.script_flush()
    counts = Counts()

    script.compare(page, counts, seen=SEEN, record=None)

    assert (counts.scanned, counts.unknown_to_ledger) == (1, 1)


def test_email_case_is_folded_ascii_only(redis_client: redis.Redis) -> None:
    Ledger(redis_client).seed("u1", {"email": "ÉCOLE@X.TW"}, ts_ms=1)
    Ledger(redis_client).seed("u2", {"email": "ECOLE@X.TW"}, ts_ms=1)
    page = [
        ListedCustomer(id="c1", email="école@x.tw", external_id="u1"),
        ListedCustomer(id="c2", email="ecole@x.tw", external_id="u2"),
    ]
    counts = Counts()
    _script(redis_client).compare(_body(page), counts, seen=SEEN, record=None)
    # str.casefold would call u1 a match; Lua's string.lower leaves É as it is.
    assert counts.samples["email_mismatches"] == ["u1"]


def test_the_previous_pages_record_is_written_first(redis_client: redis.Redis) -> None:
    record = Record(["run_id", "rc_test", "cursor", "cus_9"], {"pages": 1})
    _script(redis_client).compare(
        _body([ListedCustomer(id="c1", email="a@x.tw", external_id="u1")]),
        Counts(),
        seen=SEEN,
        record=record,
    )
    assert redis_client.hgetall(keys.RECONCILE_CHECKPOINT) == {
        "run_id": "rc_test",
        "cursor": "cus_9",
    }
    assert json.loads(redis_client.get(keys.RECONCILE_PROGRESS) or "") == {"pages": 1}
    assert redis_client.ttl(SEEN) > 0


def _body(customers: list[ListedCustomer]) -> bytes:
    """A page as Recur sends it (fields the script does not read included)."""
    data = [{"object": "customer", "status": "ACTIVE", **c} for c in customers]
    return json.dumps({"object": "list", "data": data, "has_more": False}).encode()


def _pending_field(client: redis.Redis, user: str, name: str) -> tuple[Any, int]:
    value, stamp = client.hmget(keys.pending(user), [f"v:{name}", f"t:{name}"])
    return json.loads(value or "null"), int(stamp or 0)


def _script(client: redis.Redis) -> PageScript:
    return PageScript(client, seen_ttl=3600)
