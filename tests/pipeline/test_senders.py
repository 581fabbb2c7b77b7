"""A batch's PATCHes go out together on the worker's senders (senders.py), on real Redis and the
sandbox: a user no longer waits for the users ahead of it in its task, WORKER_CONCURRENCY still
bounds the calls in flight across batches, and the task's log fields reach the senders' lines."""

from __future__ import annotations

import io
import threading
from collections.abc import Callable
from datetime import datetime

import pytest
import structlog

from sync_worker.intake.events import UserEvent
from sync_worker.pipeline.outcomes import SyncOutcome
from sync_worker.runtime import Runtime
from tests.fixtures.logs import log_lines
from tests.fixtures.sandbox import SandboxHandle

LATENCY_MS = 400


def changed(runtime: Runtime, sandbox: SandboxHandle, users: int) -> None:
    """`users` customers in Recur named "old", each with a change to "new" pending and due."""
    for n in range(users):
        sandbox.control.create_customer(f"u{n}@b.tw", name="old", external_id=f"user_{n}")
        runtime.pending.accept(
            UserEvent(f"evt_{n}", "user.updated", f"user_{n}", 1000, {"name": "new"})
        )


def answered_at(sandbox: SandboxHandle) -> list[float]:
    """When the sandbox answered each PATCH (its log's time, after its latency), sorted."""
    return sorted(
        datetime.fromisoformat(call["at"].replace("Z", "+00:00")).timestamp()
        for call in sandbox.control.requests(method="PATCH")
    )


@pytest.fixture
def runtime(make_runtime: Callable[..., Runtime]) -> Runtime:
    return make_runtime()


def test_a_batch_is_sent_together(runtime: Runtime, sandbox: SandboxHandle) -> None:
    changed(runtime, sandbox, 8)
    sandbox.control.update_faults(latency_ms=LATENCY_MS)

    outcomes = runtime.syncer.sync_claims(runtime.pending.claim_due(8))

    assert [(o.user_id, o.result) for o in outcomes] == [(f"user_{n}", "applied") for n in range(8)]
    times = answered_at(sandbox)
    assert len(times) == 8
    # One after the other, the eight answers would span at least 7 x 0.4 s.
    assert times[-1] - times[0] < 3.5 * LATENCY_MS / 1000


def test_worker_concurrency_bounds_the_calls_in_flight_across_batches(
    make_runtime: Callable[..., Runtime], sandbox: SandboxHandle
) -> None:
    runtime = make_runtime(worker_concurrency=3)
    changed(runtime, sandbox, 9)
    sandbox.control.update_faults(latency_ms=LATENCY_MS)
    first = runtime.pending.claim_due(5)
    second = runtime.pending.claim_due(9)
    assert len(first) + len(second) == 9
    # Two batches at once, as two task slots run them.
    other: list[SyncOutcome] = []
    slot = threading.Thread(target=lambda: other.extend(runtime.syncer.sync_claims(first)))
    slot.start()
    outcomes = runtime.syncer.sync_claims(second)
    slot.join(timeout=30)

    assert sorted(o.result for o in outcomes + other) == ["applied"] * 9
    times = answered_at(sandbox)
    assert len(times) == 9
    # Nine calls of 0.4 s, three at a time: three waves, never four answers within 0.3 s.
    assert all(times[i + 3] - times[i] > 0.3 for i in range(len(times) - 3))


def test_the_tasks_log_fields_reach_the_senders_lines(
    runtime: Runtime, sandbox: SandboxHandle, json_log: io.StringIO
) -> None:
    changed(runtime, sandbox, 4)
    runtime.pending.accept(UserEvent("evt_x", "user.updated", "user_gone", 1000, {"name": "x"}))
    structlog.contextvars.bind_contextvars(task_id="task-1")
    try:
        outcomes = runtime.syncer.sync_claims(runtime.pending.claim_due(5))
    finally:
        structlog.contextvars.clear_contextvars()

    assert sorted(o.result for o in outcomes) == ["applied"] * 4 + ["dead_letter"]
    lines = [line for line in log_lines(json_log) if line["event"] == "sync_outcome"]
    assert sorted(line["user_id"] for line in lines) == sorted(
        [f"user_{n}" for n in range(4)] + ["user_gone"]
    )
    assert {line.get("task_id") for line in lines} == {"task-1"}
