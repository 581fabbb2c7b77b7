"""Leases outlast every attempt: with LEASE_SECONDS at its least (twice the longest attempt), a
batch whose calls take longer than the lease keeps every claim while a sweeper is running, both
the claims waiting for one of the worker's senders and those sent and waiting for the settle."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from sync_worker.intake.events import UserEvent
from sync_worker.runtime import Runtime
from tests.fixtures.sandbox import SandboxHandle

USERS = 12
SENDERS = 2
LATENCY_MS = 800


def test_a_batch_longer_than_the_lease_keeps_its_claims(
    make_runtime: Callable[..., Runtime], sandbox: SandboxHandle
) -> None:
    runtime = make_runtime(
        recur_connect_timeout_seconds=0.5,
        recur_read_timeout_seconds=1.0,  # each call: 0.8 s, under the 1.5 s deadline
        retry_fast_max_seconds=0.5,
        lease_seconds=4.0,  # 2 x (0.5 s rate-limit wait + 1.5 s deadline)
        worker_concurrency=SENDERS,  # 12 calls two at a time: 6 x 0.8 s, longer than the lease
    )
    for n in range(USERS):
        sandbox.control.create_customer(f"u{n}@b.tw", name="old", external_id=f"user_{n}")
        runtime.pending.accept(
            UserEvent(f"evt_{n}", "user.updated", f"user_{n}", 1000, {"name": "new"})
        )
    sandbox.control.update_faults(latency_ms=LATENCY_MS)
    claims = runtime.pending.claim_due(USERS)
    assert len(claims) == USERS

    # A sweeper offers lapsed claims again, as beat and the other workers do.
    requeued: list[int] = []
    stop = threading.Event()

    def sweep() -> None:
        while not stop.is_set():
            requeued.append(runtime.pending.requeue_expired())
            stop.wait(0.05)

    sweeper = threading.Thread(target=sweep, daemon=True)
    sweeper.start()
    started = time.monotonic()
    try:
        outcomes = runtime.syncer.sync_claims(claims)
    finally:
        stop.set()
        sweeper.join(timeout=5)

    took = time.monotonic() - started
    # Never more than two at once, and longer than the lease.
    assert took >= USERS / SENDERS * LATENCY_MS / 1000 > runtime.settings.lease_seconds
    assert [outcome.result for outcome in outcomes] == ["applied"] * USERS
    assert sum(requeued) == 0
    patched = sandbox.control.requests(method="PATCH")
    assert sorted(call["external_id"] for call in patched) == sorted(
        f"user_{n}" for n in range(USERS)
    )
