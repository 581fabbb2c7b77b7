"""The real processes: drift in Recur is found by `reconcile` and repaired by the worker."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from celery import Celery

from sync_worker import redis_keys as keys
from sync_worker.pipeline.ledger import Ledger
from sync_worker.reconcile.reconciler import reports
from tests.fixtures.stack import Stack, user_event, wait_for

LEDGER_TS = 1_700_000_000_000


@pytest.fixture
def stack(shared_stack: Stack) -> Stack:
    """This module's tests share one web and worker, each test finding them as new."""
    return shared_stack


def _drift(stack: Stack) -> None:
    """Three customers; the ledger disagrees with Recur on the name of one, the metadata of
    another (someone edited them in Recur's dashboard). The sandbox answers as the doc does,
    without metadata, so only the name drift can be seen."""
    control = stack.sandbox.control
    control.create_customer("a@x.tw", name="edited in Recur", external_id="u_name")
    control.create_customer("b@x.tw", name="B", external_id="u_meta", metadata={"plan": "free"})
    control.create_customer("c@x.tw", name="C", external_id="u_same", metadata={"plan": "pro"})
    ledger = Ledger(stack.redis)
    ledger.seed("u_name", {"name": "王大明"}, ts_ms=LEDGER_TS)
    ledger.seed("u_meta", {"name": "B", "metadata": {"plan": "pro"}}, ts_ms=LEDGER_TS)
    ledger.seed("u_same", {"name": "C", "metadata": {"plan": "pro"}}, ts_ms=LEDGER_TS)


def _repaired(stack: Stack) -> bool:
    name = stack.sandbox.control.customer_by_external_id("u_name") or {}
    return name.get("name") == "王大明"


def _drained(stack: Stack) -> bool:
    """Nothing pending, due or in flight: the worker has nothing left to send."""
    client = stack.redis
    pending = next(iter(client.scan_iter(match=keys.PENDING + "*", count=1000)), None)
    return pending is None and client.zcard(keys.DUE) == 0 and client.zcard(keys.INFLIGHT) == 0


@pytest.fixture
def celery_client(stack: Stack) -> Iterator[Celery]:
    """A Celery client on the stack's broker, to send tasks as beat does."""
    client = Celery("test-client", broker=stack.redis_server.url)
    yield client
    client.close()


def test_reconcile_command_enqueues_repairs_the_worker_sends(stack: Stack) -> None:
    _drift(stack)

    command = stack.spawn("reconcile", "reconcile")
    assert command.process.wait(timeout=60) == 0, command.log()

    wait_for(lambda: _repaired(stack))
    report = reports(stack.redis)[0]
    assert (report["status"], report["drifted"], report["enqueued"]) == ("finished", 1, 1)
    assert report["fields_not_compared"] == ["metadata"]
    wait_for(lambda: _drained(stack))
    patches = stack.sandbox.control.requests(method="PATCH")
    assert [(p["external_id"], p["body"]) for p in patches] == [("u_name", {"name": "王大明"})]


def test_users_synced_with_metadata_need_no_repair(stack: Stack) -> None:
    """Synced through the real pipeline, then reconciled against the sandbox as documented
    (no metadata in its answers): nothing is drift, and not one PATCH is sent."""
    users = [f"user_{n}" for n in range(1, 11)]
    stack.sandbox.control.create_customers(
        {"email": f"{user}@x.tw", "name": "before", "external_id": user} for user in users
    )
    for n, user in enumerate(users):
        fields = {"name": f"名 {n}", "email": f"{user}@x.tw", "metadata": {"plan": "pro", "n": n}}
        assert stack.post(user_event(f"evt_{n}", user, **fields)).status_code == 202
    wait_for(lambda: len(stack.sandbox.control.requests(method="PATCH")) == len(users))
    wait_for(lambda: _drained(stack))
    wait_for(lambda: all(Ledger(stack.redis).get_many(users).get(u) for u in users))
    synced = stack.sandbox.control.requests()[-1]["seq"]

    command = stack.spawn("reconcile", "reconcile")
    assert command.process.wait(timeout=60) == 0, command.log()

    report = reports(stack.redis)[0]
    assert (report["status"], report["scanned"], report["in_sync"]) == ("finished", 10, 10)
    assert report["drifted"] == report["enqueued"] == report["email_mismatches"] == 0
    assert report["fields_compared"] == ["name"]
    # Nothing was merged back, so nothing is left for the worker to send, now or later.
    assert _drained(stack)
    assert stack.sandbox.control.requests(since=synced, method="PATCH") == []


def test_the_nightly_task_runs_once_in_the_worker(stack: Stack, celery_client: Celery) -> None:
    _drift(stack)
    for _ in range(2):  # two beats, or one message delivered twice
        celery_client.send_task(
            "sync_worker.reconcile", kwargs={"scheduled": True}, queue="maintenance"
        )

    wait_for(lambda: _repaired(stack))
    client = stack.redis
    worker = next(p for p in stack.processes if p.name == "worker")

    def both_handled() -> bool:
        turned_away = ("reconcile_skipped", "reconcile_already_running")
        return any(line in worker.log() for line in turned_away) or len(reports(client)) > 1

    wait_for(both_handled, timeout=30)
    assert client.llen("maintenance") == 0
    assert [r["status"] for r in reports(client)] == ["finished"]
    assert reports(client)[0]["scheduled"] is True
