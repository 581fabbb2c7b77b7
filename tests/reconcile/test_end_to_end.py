"""The real processes: drift in Recur is found by `reconcile` and repaired by the worker."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from celery import Celery

from sync_worker.ledger import Ledger
from sync_worker.reconcile import reports
from tests.fixtures.stack import Stack, wait_for

LEDGER_TS = 1_700_000_000_000


def _drift(stack: Stack) -> None:
    """Three customers; the ledger disagrees with Recur on the name of one, the metadata of
    another (someone edited them in Recur's dashboard)."""
    control = stack.sandbox.control
    control.create_customer("a@x.tw", name="edited in Recur", external_id="u_name")
    control.create_customer("b@x.tw", name="B", external_id="u_meta", metadata={"plan": "free"})
    control.create_customer("c@x.tw", name="C", external_id="u_same", metadata={"plan": "pro"})
    ledger = Ledger(stack.redis)
    ledger.seed("u_name", {"name": "王大明"}, ts_ms=LEDGER_TS)
    ledger.seed("u_meta", {"name": "B", "metadata": {"plan": "pro"}}, ts_ms=LEDGER_TS)
    ledger.seed("u_same", {"name": "C", "metadata": {"plan": "pro"}}, ts_ms=LEDGER_TS)


def _repaired(stack: Stack) -> bool:
    control = stack.sandbox.control
    name = control.customer_by_external_id("u_name") or {}
    meta = control.customer_by_external_id("u_meta") or {}
    return name.get("name") == "王大明" and meta.get("metadata") == {"plan": "pro"}


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
    patches = stack.sandbox.control.requests(method="PATCH")
    assert sorted((p["external_id"], p["body"]) for p in patches) == [
        ("u_meta", {"metadata": {"plan": "pro"}}),
        ("u_name", {"name": "王大明"}),
    ]
    report = reports(stack.redis)[0]
    assert (report["status"], report["drifted"], report["enqueued"]) == ("finished", 2, 2)


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
