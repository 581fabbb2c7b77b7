"""Runs, not pages: resuming after a crash, one run at a time, once a night, 429s, failures."""

from __future__ import annotations

import threading
import time
from datetime import datetime
from typing import Any

import httpx
import pytest
import redis
from pydantic import SecretStr

from sync_worker import redis_keys as keys
from sync_worker.reconcile.reconciler import Reconciler, RunResult, progress, reports
from sync_worker.recur.client import RecurClient
from sync_worker.runtime import Runtime
from sync_worker.settings import Settings
from tests.fixtures.sandbox import SandboxHandle
from tests.reconcile.conftest import list_cursors, reconciler, seed_both


class Crash(Exception):
    """Stands in for a process killed between two pages."""


def _page_ids(sandbox: SandboxHandle, count: int) -> list[str]:
    """The customer id that ends each page of 100 (the next page's cursor)."""
    ids = [c["id"] for c in _all_customers(sandbox, count)]
    return ids[99::100]


def _all_customers(sandbox: SandboxHandle, count: int) -> list[dict[str, Any]]:
    return [sandbox.control.customer_by_external_id(f"user_{n}") or {} for n in range(1, count + 1)]


def test_a_run_killed_after_page_3_resumes_at_page_4(
    runtime: Runtime, sandbox: SandboxHandle, redis_client: redis.Redis
) -> None:
    seed_both(sandbox, runtime.ledger, 1000)
    runtime.ledger.seed("user_150", {"name": "drift on page 2"})
    runtime.ledger.seed("user_950", {"name": "drift on page 10"})
    runtime.ledger.seed("gone", {"name": "not in Recur"})
    cut = _page_ids(sandbox, 1000)

    def crash_after_page_3(state: dict[str, Any]) -> None:
        if state["pages"] == 3:
            raise Crash

    with pytest.raises(Crash):
        reconciler(runtime).run(on_page=crash_after_page_3)
    # Later pages may have been fetched ahead while page 3 was compared: never counted.
    fetched = list_cursors(sandbox)
    assert fetched == [None, *cut[: len(fetched) - 1]]
    assert len(fetched) >= 3
    assert redis_client.hget(keys.RECONCILE_CHECKPOINT, "cursor") == cut[2]
    assert not redis_client.exists(keys.RECONCILE_LOCK, keys.RECONCILE_PROGRESS)
    assert reports(runtime.redis) == []
    seq = sandbox.control.requests()[-1]["seq"]

    report = reconciler(runtime).run().report

    assert list_cursors(sandbox, since=seq) == [cut[2], *cut[3:9]]
    assert report["resumed"] is True
    assert report["resumed_at_page"] == 3
    assert (report["pages"], report["scanned"], report["in_sync"]) == (10, 1000, 998)
    assert (report["drifted"], report["enqueued"]) == (2, 2)
    # The seen set survived the crash: customers of pages 1-3 are not reported missing.
    assert report["missing_in_recur"] == 1
    assert not redis_client.exists(keys.RECONCILE_CHECKPOINT)
    assert redis_client.keys(keys.RECONCILE_SEEN + "*") == []

    seq = sandbox.control.requests()[-1]["seq"]
    reconciler(runtime).run()
    assert list_cursors(sandbox, since=seq)[0] is None  # a finished run starts over


def test_a_page_failing_for_good_stops_the_run_failed_and_it_resumes_later(
    runtime: Runtime, sandbox: SandboxHandle, redis_client: redis.Redis
) -> None:
    seed_both(sandbox, runtime.ledger, 1000)
    cut = _page_ids(sandbox, 1000)

    def outage_after_page_3(state: dict[str, Any]) -> None:
        if state["pages"] == 3:
            sandbox.control.update_faults(outage=True)

    failed = reconciler(runtime, page_attempts=2).run(on_page=outage_after_page_3)

    assert failed.status == "failed"
    assert not failed.ok
    assert "503" in failed.report["error"]
    assert failed.report["errors"] == 1  # one retry, then it gave up
    assert reports(runtime.redis)[0]["status"] == "failed"
    # Pages fetched ahead before the outage began are compared too; the checkpoint is the last
    # page compared, whichever that was. The hook sees page 3 once page 4's script saved page 3's
    # checkpoint: page 4 compared, two fetched ahead, one in flight.
    done = failed.report["pages"]
    assert 3 <= done <= 7
    assert redis_client.hget(keys.RECONCILE_CHECKPOINT, "cursor") == cut[done - 1]

    sandbox.control.clear_faults()
    seq = sandbox.control.requests()[-1]["seq"]
    report = reconciler(runtime).run().report
    assert report["status"] == "finished"
    assert list_cursors(sandbox, since=seq) == cut[done - 1 : 9]
    assert (report["pages"], report["scanned"], report["in_sync"]) == (10, 1000, 1000)


def test_a_malformed_page_stops_the_run_failed_after_the_pages_before_it(
    runtime: Runtime, redis_client: redis.Redis
) -> None:
    # Recur (here a mock) answers page 2 with a customer whose email is missing.
    def customer(n: int, **fields: object) -> dict[str, object]:
        return {"id": f"cus_{n}", "email": f"u{n}@x.tw", "external_id": f"user_{n}", **fields}

    def listing(request: httpx.Request) -> httpx.Response:
        if "starting_after" not in request.url.params:
            page = [customer(n) for n in range(1, 101)]
        else:
            page = [customer(101), {"id": "cus_102", "external_id": "user_102"}]
        return httpx.Response(200, json={"object": "list", "data": page, "has_more": True})

    recur = RecurClient(
        base_url="https://api.recur.test",
        secret_key="sk_test_x",
        transport=httpx.MockTransport(listing),
    )
    reconciler = Reconciler(
        client=runtime.redis,
        recur=recur,
        dlq=runtime.dlq,
        flow=runtime.flow,
        ops=runtime.ops,
        reports_kept=10,
        page_attempts=2,
    )

    failed = reconciler.run()

    assert failed.status == "failed"
    assert "customer 2" in failed.report["error"]
    assert "not the documented shape" in failed.report["error"]
    assert (failed.report["pages"], failed.report["scanned"]) == (1, 100)
    assert redis_client.hget(keys.RECONCILE_CHECKPOINT, "cursor") == "cus_100"
    # Nothing of the malformed page counted as seen.
    assert not redis_client.sismember(keys.reconcile_seen(failed.report["run_id"]), "user_101")


def test_a_checkpoint_recur_no_longer_knows_starts_over(
    runtime: Runtime, sandbox: SandboxHandle, redis_client: redis.Redis
) -> None:
    seed_both(sandbox, runtime.ledger, 150)
    redis_client.hset(
        keys.RECONCILE_CHECKPOINT,
        mapping={"run_id": "rc_old", "cursor": "cus_gone", "counts": '{"pages": 7}'},
    )
    report = reconciler(runtime).run().report
    assert report["status"] == "finished"
    assert (report["pages"], report["scanned"], report["resumed"]) == (2, 150, False)
    assert list_cursors(sandbox)[:2] == ["cus_gone", None]


def test_two_concurrent_triggers_run_once(
    runtime: Runtime, sandbox: SandboxHandle, redis_client: redis.Redis
) -> None:
    seed_both(sandbox, runtime.ledger, 300)
    on_page_1, go_on = threading.Event(), threading.Event()
    results: list[RunResult] = []

    def hold_at_page_1(state: dict[str, Any]) -> None:
        if state["pages"] == 1:
            on_page_1.set()
            assert go_on.wait(10)

    first = threading.Thread(
        target=lambda: results.append(reconciler(runtime).run(on_page=hold_at_page_1))
    )
    first.start()
    assert on_page_1.wait(10)
    try:
        second = reconciler(runtime).run()
        scheduled = reconciler(runtime).run(scheduled=True)
    finally:
        go_on.set()
        first.join(10)

    assert second.status == scheduled.status == "already_running"
    assert not second.ok
    assert (second.report["pages"], second.report["scanned"]) == (1, 100)
    assert second.report["run_id"] == results[0].report["run_id"]
    assert results[0].status == "finished"
    assert len(reports(runtime.redis)) == 1
    assert len(list_cursors(sandbox)) == 3
    assert progress(runtime.redis) is None


def test_the_lock_is_renewed_while_a_long_run_holds_it(
    runtime: Runtime, sandbox: SandboxHandle, redis_client: redis.Redis
) -> None:
    seed_both(sandbox, runtime.ledger, 200)
    ttls: list[int] = []

    def slow_page(state: dict[str, Any]) -> None:
        time.sleep(0.9)  # longer than the TTL: only renewal keeps the lock
        ttls.append(int(redis_client.pttl(keys.RECONCILE_LOCK)))

    assert reconciler(runtime, lock_ttl_seconds=0.6).run(on_page=slow_page).status == "finished"
    assert all(ttl > 0 for ttl in ttls)
    assert not redis_client.exists(keys.RECONCILE_LOCK)


def test_the_nightly_run_happens_once_a_day(
    runtime: Runtime, sandbox: SandboxHandle, redis_client: redis.Redis
) -> None:
    seed_both(sandbox, runtime.ledger, 10)
    tonight = datetime(2026, 11, 25, 3, 0).timestamp()

    first = reconciler(runtime, clock=lambda: tonight).run(scheduled=True)
    again = reconciler(runtime, clock=lambda: tonight + 60).run(scheduled=True)
    manual = reconciler(runtime, clock=lambda: tonight + 120).run()
    tomorrow = reconciler(runtime, clock=lambda: tonight + 86_400).run(scheduled=True)

    assert [r.status for r in (first, again, manual, tomorrow)] == [
        "finished",
        "already_done",
        "finished",
        "finished",
    ]
    assert again.ok
    assert first.report["scheduled"] is True
    assert len(reports(runtime.redis)) == 3


def test_a_failed_nightly_run_may_run_again_the_same_night(
    runtime: Runtime, sandbox: SandboxHandle
) -> None:
    seed_both(sandbox, runtime.ledger, 10)
    sandbox.control.set_faults(outage=True)
    assert reconciler(runtime, page_attempts=1).run(scheduled=True).status == "failed"
    sandbox.control.clear_faults()
    assert reconciler(runtime).run(scheduled=True).status == "finished"


def test_a_429_mid_run_waits_retry_after_and_retries_the_same_page(
    runtime: Runtime, sandbox: SandboxHandle
) -> None:
    seed_both(sandbox, runtime.ledger, 600)
    sandbox.control.set_faults(rate_limit_rps=3)

    report = reconciler(runtime, page_attempts=5).run().report

    assert report["status"] == "finished"
    assert (report["pages"], report["scanned"], report["in_sync"]) == (6, 600, 600)
    log = [e for e in sandbox.control.requests() if e["path"] == "/v1/customers"]
    limited = [i for i, e in enumerate(log) if e["status"] == 429]
    assert limited
    assert report["errors"] == len(limited)
    for i in limited:
        retried = log[i + 1]
        assert retried["query"].get("starting_after") == log[i]["query"].get("starting_after")
        waited = _seconds(retried["at"]) - _seconds(log[i]["at"])
        assert waited >= 0.95  # the sandbox's Retry-After is at least 1 s
    assert {e["status"] for e in log} == {200, 429}


def test_an_unauthorized_key_fails_the_run_without_retrying(
    sandbox: SandboxHandle, settings: Settings
) -> None:
    bad = Runtime(settings.model_copy(update={"recur_secret_key": SecretStr("sk_test_wrong")}))
    try:
        result = reconciler(bad).run()
    finally:
        bad.close()
    assert result.status == "failed"
    assert "401" in result.report["error"]
    assert len(sandbox.control.requests()) == 1


def _seconds(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
