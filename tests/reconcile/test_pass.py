"""One reconciliation pass against the sandbox over HTTP and a real Redis: paging and counts."""

from __future__ import annotations

import json
import math

import pytest
import redis

from sync_worker import redis_keys as keys
from sync_worker.intake.events import UserEvent
from sync_worker.pipeline.ledger import Ledger
from sync_worker.reconcile.reconciler import progress, reports
from sync_worker.runtime import Runtime
from sync_worker.sandbox import SandboxControl
from tests.fixtures.sandbox import SandboxHandle
from tests.reconcile.conftest import (
    LEDGER_TS,
    list_cursors,
    reconciler,
    seed_both,
    seed_ledger,
    seeded_name,
)


@pytest.mark.parametrize("count", [0, 1, 100, 101])
def test_pages_every_customer_once(
    runtime: Runtime, sandbox: SandboxHandle, redis_client: redis.Redis, count: int
) -> None:
    seed_both(sandbox, runtime.ledger, count)

    result = reconciler(runtime).run()

    assert result.status == "finished"
    report = result.report
    pages = max(1, math.ceil(count / 100))
    assert (report["pages"], report["scanned"], report["in_sync"]) == (pages, count, count)
    assert report["drifted"] == report["enqueued"] == report["missing_in_recur"] == 0
    listed = [e for e in sandbox.control.requests() if e["path"] == "/v1/customers"]
    assert [e["query"]["limit"] for e in listed] == ["100"] * pages
    assert list_cursors(sandbox)[0] is None
    assert len(set(list_cursors(sandbox))) == pages
    assert sandbox.control.requests(method="PATCH") == []
    # A finished pass leaves no checkpoint, progress, lock or seen set behind.
    assert redis_client.keys("rs:reconcile:*") == [keys.RECONCILE_REPORTS]
    assert reports(runtime.redis) == [report]


def test_ten_thousand_customers(
    runtime: Runtime, sandbox: SandboxHandle, redis_client: redis.Redis
) -> None:
    seed_both(sandbox, runtime.ledger, 10_000)
    seed_ledger(runtime.ledger, {"user_5000": {"name": "renamed"}}, ts_ms=LEDGER_TS + 1)

    report = reconciler(runtime).run().report

    assert (report["pages"], report["scanned"]) == (100, 10_000)
    assert (report["in_sync"], report["drifted"], report["enqueued"]) == (9_999, 1, 1)
    assert len(list_cursors(sandbox)) == 100
    assert redis_client.zrange(keys.DUE, 0, -1) == ["user_5000"]


def _name_and_metadata_drift(control: SandboxControl, ledger: Ledger) -> None:
    """u_name differs in name, u_meta in metadata, u_ok and u_empty agree with the ledger."""
    control.create_customer("a@x.tw", name="Recur name", external_id="u_name")
    control.create_customer("b@x.tw", name="Same", external_id="u_meta", metadata={"plan": "free"})
    control.create_customer("c@x.tw", name="Same", external_id="u_ok", metadata={"plan": "pro"})
    control.create_customer("d@x.tw", name="Same", external_id="u_empty")
    seed_ledger(
        ledger,
        {
            "u_name": {"name": "Ledger name"},
            "u_meta": {"name": "Same", "metadata": {"plan": "pro"}},
            "u_ok": {"name": "Same", "metadata": {"plan": "pro"}},
            "u_empty": {"name": "Same", "metadata": {}},
        },
    )


def test_metadata_recur_does_not_return_is_never_drift(
    runtime: Runtime, sandbox: SandboxHandle, redis_client: redis.Redis
) -> None:
    _name_and_metadata_drift(sandbox.control, runtime.ledger)

    report = reconciler(runtime).run().report

    assert report["drifted"] == report["enqueued"] == 1
    assert (report["drifted_name"], report["drifted_metadata"], report["in_sync"]) == (1, 0, 3)
    assert (report["compared_name"], report["compared_metadata"]) == (4, 0)
    assert (report["fields_compared"], report["fields_not_compared"]) == (["name"], ["metadata"])
    assert redis_client.zrange(keys.DUE, 0, -1) == ["u_name"]
    assert redis_client.exists(keys.pending("u_meta")) == 0


def test_drift_in_name_and_metadata_is_enqueued_with_the_ledger_state(
    echo_runtime: tuple[Runtime, SandboxControl], redis_client: redis.Redis
) -> None:
    # A sandbox that returns metadata (`--echo-metadata`), as an experiment: then it is compared.
    runtime, control = echo_runtime
    _name_and_metadata_drift(control, runtime.ledger)

    report = reconciler(runtime).run().report

    assert report["drifted"] == report["enqueued"] == 2
    assert (report["drifted_name"], report["drifted_metadata"], report["in_sync"]) == (1, 1, 2)
    assert report["fields_compared"] == ["name", "metadata"]
    assert sorted(report["samples"]["drifted"]) == ["u_meta", "u_name"]
    assert sorted(redis_client.zrange(keys.DUE, 0, -1)) == ["u_meta", "u_name"]
    # Only the drifted field goes back, with the ledger's own time: the stale guard still holds.
    assert redis_client.hgetall(keys.pending("u_meta")) | {"e:metadata": ""} == {
        "v:metadata": '{"plan":"pro"}',
        "t:metadata": str(LEDGER_TS),
        "e:metadata": "",
        "version": "1",
        "first_seen": redis_client.hget(keys.pending("u_meta"), "first_seen"),
        "due": redis_client.hget(keys.pending("u_meta"), "due"),
        "attempts": "0",
    }
    # The normal sync path repairs them.
    claims = runtime.pending.claim_due(10)
    assert {o.result for o in runtime.syncer.sync_claims(claims)} == {"applied"}
    assert control.customer_by_external_id("u_name")["name"] == "Ledger name"  # type: ignore[index]
    assert control.customer_by_external_id("u_meta")["metadata"] == {"plan": "pro"}  # type: ignore[index]
    assert reconciler(runtime).run().report["in_sync"] == 4


def test_unknown_missing_and_email(runtime: Runtime, sandbox: SandboxHandle) -> None:
    control = sandbox.control
    control.create_customer("known@x.tw", name="K", external_id="known")
    control.create_customer("stranger@x.tw", name="S", external_id="stranger")
    control.create_customer("nobody@x.tw", name="N")
    seed_ledger(
        runtime.ledger,
        {
            "known": {"name": "K", "email": "other@x.tw"},
            "gone_1": {"name": "G1"},
            "gone_2": {"name": "G2"},
            # Rebound to another external id: not expected in Recur under its old one.
            "moved": {"name": "M", "external_id": "moved_2"},
        },
    )

    report = reconciler(runtime).run().report

    assert (report["scanned"], report["without_external_id"], report["in_sync"]) == (3, 1, 1)
    assert report["unknown_to_ledger"] == 1
    assert report["samples"]["unknown_to_ledger"] == ["stranger"]
    assert report["missing_in_recur"] == 2
    assert sorted(report["samples"]["missing_in_recur"]) == ["gone_1", "gone_2"]
    assert report["email_mismatches"] == 1
    assert report["samples"]["email_mismatches"] == ["known"]
    # Email is immutable upstream: reported, never sent, never enqueued.
    assert report["enqueued"] == 0
    assert sandbox.control.requests(method="PATCH") == []


def _checkout_customer_and_its_user(sandbox: SandboxHandle, runtime: Runtime) -> str:
    """A customer Checkout made (no external id) whose email the ledger knows for user_c; the
    customer's id."""
    customer = sandbox.control.create_customer("Chen@Shop.tw", name="from checkout")
    seed_ledger(
        runtime.ledger,
        {"user_c": {"name": "陳小明", "email": "Chen@Shop.tw", "metadata": {"plan": "pro"}}},
    )
    return str(customer["id"])


def test_an_unbound_customer_whose_email_the_ledger_knows_is_bound_by_the_sync(
    runtime: Runtime, sandbox: SandboxHandle, redis_client: redis.Redis
) -> None:
    customer_id = _checkout_customer_and_its_user(sandbox, runtime)

    report = reconciler(runtime).run().report

    assert (report["without_external_id"], report["bindable_by_email"]) == (1, 1)
    assert report["enqueued"] == 1
    assert report["missing_in_recur"] == 0  # it is in Recur, unbound
    assert report["samples"]["bindable_by_email"] == ["user_c"]
    assert redis_client.zrange(keys.DUE, 0, -1) == ["user_c"]
    # The sync path: a 404 by external id, then found by email and bound in one PATCH by id.
    claims = runtime.pending.claim_due(10)
    assert [o.result for o in runtime.syncer.sync_claims(claims)] == ["applied"]
    bind = sandbox.control.requests(method="PATCH")[-1]
    assert bind["path"] == f"/v1/customers/{customer_id}"
    assert bind["body"] == {"name": "陳小明", "metadata": {"plan": "pro"}, "external_id": "user_c"}
    bound = sandbox.control.customer_by_external_id("user_c")
    assert bound is not None
    assert (bound["id"], bound["name"]) == (customer_id, "陳小明")
    again = reconciler(runtime).run().report
    assert (again["without_external_id"], again["bindable_by_email"], again["in_sync"]) == (0, 0, 1)


def test_a_dry_run_lists_bindable_customers_and_binding_can_be_turned_off(
    runtime: Runtime, sandbox: SandboxHandle, redis_client: redis.Redis
) -> None:
    _checkout_customer_and_its_user(sandbox, runtime)

    listed = reconciler(runtime).run(dry_run=True).report
    off = reconciler(runtime, bind_by_email=False).run().report

    assert (listed["bindable_by_email"], listed["enqueued"]) == (1, 1)
    assert listed["samples"]["bindable_by_email"] == ["user_c"]
    assert (off["without_external_id"], off["bindable_by_email"], off["enqueued"]) == (1, 0, 0)
    assert redis_client.zcard(keys.DUE) == 0
    assert sandbox.control.requests(method="PATCH") == []


def test_a_newer_pending_update_is_left_to_win(
    runtime: Runtime, sandbox: SandboxHandle, redis_client: redis.Redis
) -> None:
    sandbox.control.create_customer("a@x.tw", name="edited in Recur", external_id="u1")
    seed_ledger(runtime.ledger, {"u1": {"name": "applied"}})
    newer = UserEvent("evt_1", "user.updated", "u1", LEDGER_TS + 10, {"name": "newest"})
    runtime.pending.accept(newer)

    report = reconciler(runtime).run().report

    assert (report["drifted"], report["enqueued"], report["left_to_pending"]) == (1, 0, 1)
    assert json.loads(redis_client.hget(keys.pending("u1"), "v:name") or "") == "newest"


def test_dry_run_sends_and_enqueues_nothing(
    runtime: Runtime, sandbox: SandboxHandle, redis_client: redis.Redis
) -> None:
    seed_both(sandbox, runtime.ledger, 150)
    seed_ledger(
        runtime.ledger, {"user_7": {"name": "x"}, "user_120": {"name": "y"}}, ts_ms=LEDGER_TS + 1
    )
    _not_found_dead_letter(runtime, sandbox, "user_late")
    sandbox.control.create_customer("late@x.tw", external_id="user_late")
    sandbox.control.clear_requests()

    result = reconciler(runtime).run(dry_run=True)

    assert result.status == "dry_run"
    assert result.report["dry_run"] is True
    assert (result.report["drifted"], result.report["enqueued"]) == (2, 2)
    assert result.report["dead_letters_replayed"] == 1
    assert {e["method"] for e in sandbox.control.requests()} == {"GET"}
    assert redis_client.zcard(keys.DUE) == 0
    assert redis_client.keys(keys.PENDING + "*") == []
    assert runtime.dlq.find(reason="not_found")[0].user_id == "user_late"
    assert redis_client.exists(keys.RECONCILE_CHECKPOINT) == 0
    assert reports(runtime.redis)[0]["status"] == "dry_run"


def test_not_found_dead_letter_is_replayed_once_the_customer_exists(
    runtime: Runtime, sandbox: SandboxHandle, redis_client: redis.Redis
) -> None:
    _not_found_dead_letter(runtime, sandbox, "u_late")
    _not_found_dead_letter(runtime, sandbox, "u_still_missing")
    sandbox.control.create_customer("late@x.tw", name="old", external_id="u_late")

    report = reconciler(runtime).run().report

    assert report["dead_letters_replayed"] == 1
    assert report["samples"]["dead_letters_replayed"] == ["u_late"]
    assert redis_client.zrange(keys.DUE, 0, -1) == ["u_late"]
    runtime.syncer.sync_claims(runtime.pending.claim_due(10))
    assert sandbox.control.customer_by_external_id("u_late")["name"] == "new"  # type: ignore[index]
    assert [d.user_id for d in runtime.dlq.find()] == ["u_still_missing"]


def test_reports_are_kept_newest_first_and_trimmed(runtime: Runtime) -> None:
    for _ in range(3):
        reconciler(runtime, reports_kept=2).run()
    kept = reports(runtime.redis, limit=10)
    assert len(kept) == 2
    assert kept[0]["started_at"] >= kept[1]["started_at"]
    assert progress(runtime.redis) is None


def _not_found_dead_letter(runtime: Runtime, sandbox: SandboxHandle, user_id: str) -> None:
    """A change to a user Recur does not know, sent through the real sync path: a 404."""
    event = UserEvent(f"evt_{user_id}", "user.updated", user_id, LEDGER_TS, {"name": "new"})
    runtime.pending.accept(event)
    runtime.redis.zadd(keys.DUE, {user_id: 0})
    outcomes = runtime.syncer.sync_claims(runtime.pending.claim_due(10))
    assert [o.result for o in outcomes] == ["dead_letter"]


def test_seeded_names_match_the_sandbox(sandbox: SandboxHandle) -> None:
    sandbox.control.seed(1)
    assert sandbox.control.customer_by_external_id("user_1")["name"] == seeded_name(1)  # type: ignore[index]


def test_a_ledger_of_the_layout_before_the_buckets_is_reconciled_and_moved(
    runtime: Runtime, sandbox: SandboxHandle
) -> None:
    sandbox.control.create_customer("a@x.tw", name="changed in Recur", external_id="old_a")
    client = runtime.redis
    # As the version before wrote them: a hash per user, listed in the index.
    for user, name in (("old_a", "ours"), ("old_gone", "gone")):
        client.hset(
            keys.LEDGER + user,
            mapping={"v:name": json.dumps(name), "t:name": "1000", "applied_at": "1.5"},
        )
        client.sadd(keys.LEDGER_INDEX, user)

    report = reconciler(runtime).run().report

    assert (report["drifted"], report["enqueued"]) == (1, 1)
    assert report["samples"]["missing_in_recur"] == ["old_gone"]
    assert not client.exists(keys.LEDGER_INDEX, keys.LEDGER + "old_a", keys.LEDGER + "old_gone")
    moved = Ledger(client).get_many(["old_a", "old_gone"])
    assert {user: entry.fields["name"].value for user, entry in moved.items()} == {
        "old_a": "ours",
        "old_gone": "gone",
    }
