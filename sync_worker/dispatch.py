"""The dispatcher: a thread in each worker that turns due users into Celery tasks.

Each tick it claims users whose debounce or retry time has come (an atomic claim, so workers
never share a user) and publishes them in batches as `sync_batch` tasks: one Celery message per
batch, not per event, which is what lets one worker keep up with thousands of users a second.
It claims only as much as the queue has room for, so claimed users do not sit behind a backlog
while their leases run out. Every `sweep_interval` it also sweeps lapsed claims and writes a
heartbeat, and samples the gauges of the dashboard's history (history.py); while the sync is
paused for auth, it probes Recur instead. While the circuit breaker is open it claims nothing;
once its cool-down is over, the dispatcher that takes the probe lock sends one due user's PATCH
itself, as the probe (breaker.py).
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Callable

import redis

from sync_worker import history
from sync_worker import redis_keys as keys
from sync_worker.breaker import Gate
from sync_worker.logging import get_logger
from sync_worker.pending import Claim
from sync_worker.runtime import Runtime
from sync_worker.status import retrying_users

log = get_logger(__name__)

HEARTBEAT_SECONDS = 10
QUEUED_BATCHES_PER_SLOT = 2
PROBE_CANDIDATES = 10


class Dispatcher:
    """Claims due users and hands them to `publish` in batches."""

    def __init__(
        self,
        runtime: Runtime,
        *,
        publish: Callable[[list[Claim]], None],
        queue_depth: Callable[[], int],
        hostname: str,
    ) -> None:
        self._runtime = runtime
        self._publish = publish
        self._queue_depth = queue_depth
        self._hostname = hostname
        self._next_sweep = 0.0
        self._next_probe = 0.0
        self._next_heartbeat = 0.0

    def tick(self) -> int:
        """One round: housekeeping, then claim and publish; returns how many users it claimed."""
        settings = self._runtime.settings
        now = time.monotonic()
        if now >= self._next_heartbeat:
            self._heartbeat()
            self._next_heartbeat = now + HEARTBEAT_SECONDS
        if now >= self._next_sweep:
            self._runtime.sweep()
            self._sample_history()
            self._next_sweep = now + settings.sweep_interval_seconds
        if self._runtime.flow.paused() is not None:
            if now >= self._next_probe:
                self._next_probe = now + settings.auth_probe_interval_seconds
                self._runtime.probe_auth()
            return 0
        if self._runtime.flow.cooldown_remaining() > 0:
            return 0
        gate = self._runtime.breaker.gate()
        if gate.action == "hold":
            return 0
        if gate.action == "probe":
            return self._probe(gate)
        room = settings.worker_concurrency * QUEUED_BATCHES_PER_SLOT - self._queue_depth()
        if room <= 0:
            return 0
        claims = self._runtime.pending.claim_due(room * settings.sync_batch_size)
        # Spread a small claim over every slot rather than queueing it behind one batch.
        size = max(
            1, min(settings.sync_batch_size, math.ceil(len(claims) / settings.worker_concurrency))
        )
        for start in range(0, len(claims), size):
            self._publish(claims[start : start + size])
        return len(claims)

    def _probe(self, gate: Gate) -> int:
        """Send one due user's change as the half-open probe, here rather than through the
        queue, so exactly one call goes out and its answer decides the breaker's state."""
        pending = self._runtime.pending
        try:
            candidates = pending.claim_due(PROBE_CANDIDATES)
            if not candidates:
                return 0
            # A user whose own change keeps failing says little about Recur's health: probe with
            # the one that failed least, so a few poison users cannot hold everybody back.
            attempts = pending.attempts_of([c.user_id for c in candidates])
            chosen = candidates[attempts.index(min(attempts))]
            for other in candidates:
                if other is not chosen:
                    pending.hand_back(other, delay=0, error=None)
            self._runtime.syncer.sync_claims([chosen], probe=True)
            return 1
        finally:
            # A no-op once the probe's answer was recorded; frees the lock if nothing was sent.
            self._runtime.breaker.release_probe(gate)

    def run(self, stop: threading.Event) -> None:
        """Tick until `stop` is set; a Redis outage is logged and waited out, never fatal."""
        interval = self._runtime.settings.dispatch_interval_seconds
        failures = 0
        while not stop.is_set():
            try:
                claimed = self.tick()
                failures = 0
            except (redis.RedisError, OSError) as error:
                failures += 1
                if failures == 1 or failures % 50 == 0:
                    log.warning("dispatcher_error", error=str(error), failures=failures)
                stop.wait(min(5.0, interval * 2**failures))
                continue
            if not claimed:
                stop.wait(interval)

    def _sample_history(self) -> None:
        """This minute's gauges for the dashboard's charts (history.py), at each sweep."""
        runtime = self._runtime
        depths = runtime.pending.depths()
        gauges = {
            "due_now": depths["due_now"],
            "pending": depths["pending"],
            "inflight": depths["inflight"],
            "retrying": retrying_users(runtime.redis),
            "breaker": history.BREAKER_LEVELS.get(runtime.breaker.view().state, 0),
            "paused": int(runtime.flow.paused() is not None),
        }
        history.write_gauges(runtime.redis, gauges, now=time.time())

    def _heartbeat(self) -> None:
        record = {
            "hostname": self._hostname,
            "at": time.time(),
            "concurrency": self._runtime.settings.worker_concurrency,
            "mode": self._runtime.settings.mode_label,
        }
        self._runtime.redis.set(
            keys.worker_heartbeat(self._hostname), json.dumps(record), ex=HEARTBEAT_SECONDS * 3
        )
