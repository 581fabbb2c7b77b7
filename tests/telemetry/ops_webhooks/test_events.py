"""The six events come from the real components of one process (and from none when off), and
reach the receiver; end to end, a worker reports a dead letter made by a 404 from the sandbox."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from sync_worker import redis_keys as keys
from sync_worker.reconcile.reconciler import Reconciler
from sync_worker.runtime import Runtime
from sync_worker.settings import load_settings
from sync_worker.telemetry.ops_webhooks import OpsDeliverer
from tests.fixtures.sandbox import SandboxHandle
from tests.fixtures.stack import Stack, user_event, wait_for
from tests.operators.conftest import accept, sync_due
from tests.telemetry.ops_webhooks.conftest import OPS_SECRET, Receiver


def process(redis_url: str, sandbox: SandboxHandle, **overrides: Any) -> Runtime:
    return Runtime(
        load_settings(
            redis_url=redis_url,
            recur_api_url=sandbox.url,
            recur_secret_key=sandbox.secret_key,
            debounce_window_seconds=0,
            retry_fast_attempts=1,
            breaker_min_calls=1,
            breaker_cool_down_seconds=0.01,
            **overrides,
        )
    )


@pytest.fixture
def runtime(redis_url: str, sandbox: SandboxHandle, receiver: Receiver) -> Iterator[Runtime]:
    """A worker's collaborators with operational webhooks on, to the receiver."""
    built = process(redis_url, sandbox, ops_webhook_url=receiver.url, ops_webhook_secret=OPS_SECRET)
    yield built
    built.close()


def deliver_all(runtime: Runtime) -> None:
    deliverer = OpsDeliverer.from_settings(
        runtime.settings, client=runtime.redis, stats=runtime.stats
    )
    try:
        while deliverer.deliver_due():
            pass
    finally:
        deliverer.close()


def test_each_component_reports_its_event(
    runtime: Runtime, sandbox: SandboxHandle, receiver: Receiver
) -> None:
    accept(runtime, "ghost", name="nobody knows me")
    [outcome] = sync_due(runtime)  # the sandbox has no such customer: 404
    runtime.flow.pause(reason="unauthorized", status=401, message="invalid API key")
    runtime.flow.pause(reason="unauthorized", status=401, message="again")  # already paused
    runtime.flow.resume()
    runtime.breaker.record(failures=1)
    time.sleep(0.05)  # the cool-down
    assert runtime.breaker.gate().action == "probe"
    runtime.breaker.record(successes=1, probe=True)
    report = Reconciler.from_runtime(runtime).run().report

    deliver_all(runtime)

    got = {event["type"]: event["data"] for event in receiver.accepted()}
    assert len(receiver.accepted()) == len(got) == 6, "one event per fact, none twice"
    assert got["dead_letter.created"] == {
        "id": outcome.dead_letter_id,
        "user_id": "ghost",
        "reason": "not_found",
        "http_status": 404,
        "error_code": "resource_not_found",
        "error_message": got["dead_letter.created"]["error_message"],
        "attempts": 1,
        "replayed": False,
    }
    assert got["dead_letter.created"]["error_message"]
    assert got["sync.paused"] == {
        "reason": "unauthorized",
        "status": 401,
        "message": "invalid API key",
    }
    assert got["sync.resumed"] == {}
    assert got["breaker.opened"]["window_failures"] == 1
    assert got["breaker.opened"]["cool_down_s"] == 0.01
    assert got["breaker.closed"]["probe"] == "succeeded"
    finished = got["reconciliation.finished"]
    assert finished["run_id"] == report["run_id"]
    assert finished["status"] == "finished"
    assert finished["scanned"] == report["scanned"]
    assert "samples" not in finished
    everything = json.dumps(receiver.accepted())
    assert sandbox.secret_key not in everything
    assert OPS_SECRET not in everything


def test_off_by_default_nothing_is_written(redis_url: str, sandbox: SandboxHandle) -> None:
    runtime = process(redis_url, sandbox)
    try:
        accept(runtime, "ghost", name="nobody knows me")
        assert [o.result for o in sync_due(runtime)] == ["dead_letter"]
        runtime.flow.pause(reason="unauthorized", status=401, message="invalid API key")
        runtime.flow.resume()
        runtime.breaker.record(failures=1)
        assert list(runtime.redis.scan_iter(match=keys.PREFIX + "ops:*")) == []
    finally:
        runtime.close()


def test_a_worker_reports_a_dead_letter_from_a_404(stack: Stack, receiver: Receiver) -> None:
    stack.restart_worker(
        env={
            "OPS_WEBHOOK_URL": receiver.url,
            "OPS_WEBHOOK_SECRET": OPS_SECRET,
            "OPS_WEBHOOK_TIMEOUT_SECONDS": "2",
        }
    )
    response = stack.post(user_event("evt_ops_404", "user_unknown", name="王大明"))
    assert response.status_code == 202

    [event] = wait_for(lambda: receiver.accepted("dead_letter.created"), timeout=30)
    [entry] = stack.dead_letters()
    assert event["data"]["id"] == entry["id"]
    assert event["data"]["user_id"] == "user_unknown"
    assert event["data"]["reason"] == "not_found"
    assert event["data"]["http_status"] == 404
    assert receiver.forged == 0
    wait_for(lambda: not stack.redis.exists(keys.OPS_DUE, keys.OPS_OUTBOX), timeout=10)
