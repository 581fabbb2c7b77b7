"""The dispatcher: a thread in each worker that turns due users into Celery tasks.

Each tick it claims users whose debounce or retry time has come (an atomic claim, so workers
never share a user) and publishes them in batches as `sync_batch` tasks: one Celery message per
batch, not per event, which is what lets one worker keep up with thousands of users a second.
It claims only as much as the queue has room for, so claimed users do not sit behind a backlog
while their leases run out. A round that claimed some is followed by the next one
`dispatch_interval` after its start, so users falling due meanwhile go out together (a task of
one user costs twice its sync); after an empty round, the next waits only until the next user
falls due. Every `sweep_interval` it also sweeps lapsed
claims and samples the gauges of the dashboard's history (history.py); while the sync is paused
for auth, it probes Recur instead. While the circuit breaker is open it claims nothing; once
its cool-down is over, the dispatcher that takes the probe lock sends one due user's PATCH
itself, as the probe (breaker.py).

No exception ends the thread: a failed round (Redis down, kombu's `OperationalError` once the
publish retries are spent, `Throttled` from the auth probe, a bug) is logged with its type,
counted (`dispatcher_errors_total`), and the next round waits a little longer, capped. Every
`HEARTBEAT_SECONDS` it writes a heartbeat saying when its last round succeeded, so a dispatcher
that loops but gets nothing done shows as stalled (status.py, `/readyz`, `/metrics`), instead of
a worker that looks alive while intake keeps answering 202.
"""

from __future__ import annotations

import contextlib
import json
import math
import threading
import time
from collections.abc import Callable

import redis

from sync_worker import redis_keys as keys
from sync_worker.logging import get_logger
from sync_worker.ops.status import retrying_users
from sync_worker.pipeline.breaker import Gate
from sync_worker.pipeline.records import Claim
from sync_worker.runtime import Runtime
from sync_worker.telemetry import history

log = get_logger(__name__)

HEARTBEAT_SECONDS = 10
ERROR_BACKOFF_MAX_SECONDS = 5.0
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
        # Often enough that a reader sees a stall soon after DISPATCHER_STALL_SECONDS.
        self._heartbeat_every = min(
            HEARTBEAT_SECONDS, runtime.settings.dispatcher_stall_seconds / 3
        )
        self.last_loop_at = time.time()
        """Unix time the last round ended without an exception (start-up counts as one)."""
        self.failures = 0
        """Rounds failed in a row."""
        self.last_error: str | None = None
        """The exception type of the last failed round, until a round succeeds."""
        self._wait = runtime.settings.dispatch_interval_seconds

    def tick(self) -> int:
        """One round: housekeeping, then claim and publish; returns how many users it claimed."""
        settings = self._runtime.settings
        self._wait = settings.dispatch_interval_seconds
        now = time.monotonic()
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
        limit = room * settings.sync_batch_size
        claims = self._runtime.pending.claim_due(limit)
        if len(claims) == limit:
            self._wait = 0.0  # more may be due: go again at once
        elif not claims:
            self._wait = self._until_next_due()
        # In as few tasks as the batch size allows, evenly: a task's users are sent together
        # (senders.py), so a bigger task costs them no wait, while each task costs its publish,
        # its delivery and the batch's own Redis round trips. (Spread over every slot, in tasks
        # of at least four, bench.latency's 500/s went out in tasks of 5-7 users.)
        tasks = math.ceil(len(claims) / settings.sync_batch_size)
        size = math.ceil(len(claims) / tasks) if tasks else 1
        for start in range(0, len(claims), size):
            try:
                self._publish(claims[start : start + size])
            except Exception:
                self._hand_back(claims[start:])
                raise
        if self._wait > 0 and claims:
            # The interval counts from this round's start: the round's own time (the claim, the
            # publishes) is not added to the wait of the users falling due meanwhile.
            self._wait = max(0.0, self._wait - (time.monotonic() - now))
        return len(claims)

    def _hand_back(self, claims: list[Claim]) -> None:
        """Offer claims that could not be published again now, rather than after their lease
        lapses; where Redis itself failed, the lease lapsing is what brings them back."""
        for claim in claims:
            with contextlib.suppress(Exception):
                self._runtime.pending.hand_back(claim, delay=0, error=None)

    def _probe(self, gate: Gate) -> int:
        """Send one due user's change as the half-open probe, here rather than through the
        queue, so exactly one call goes out and its answer decides the breaker's state."""
        pending = self._runtime.pending
        try:
            candidates = pending.claim_due(PROBE_CANDIDATES)
            if not candidates:
                return 0
            # A user whose own change keeps failing says little about Recur's health: probe with
            # the one that failed least, so a few poison users cannot hold everybody back. A
            # failed probe is held, not counted as an attempt: its probes count here instead, so
            # successive probes rotate rather than send the same user's change again and again.
            users = [c.user_id for c in candidates]
            failed = [
                attempts + probes
                for attempts, probes in zip(
                    pending.attempts_of(users), self._runtime.breaker.probes_of(users), strict=True
                )
            ]
            chosen = candidates[failed.index(min(failed))]
            for other in candidates:
                if other is not chosen:
                    pending.hand_back(other, delay=0, error=None)
            self._runtime.breaker.count_probe(chosen.user_id)
            self._runtime.syncer.sync_claims([chosen], probe=True)
            return 1
        finally:
            # A no-op once the probe's answer was recorded; frees the lock if nothing was sent.
            self._runtime.breaker.release_probe(gate)

    def run(self, stop: threading.Event) -> None:
        """Tick until `stop` is set. A failed round is logged, counted and retried after a
        capped backoff: nothing but `stop` ends this loop."""
        while not stop.is_set():
            self.run_once()
            self.beat()
            if self.failures:
                stop.wait(self.backoff())
            elif self._wait > 0:
                stop.wait(self._wait)

    def _until_next_due(self) -> float:
        """After a round that found nobody due: seconds until the earliest user falls due, at
        most the interval, so that after a quiet spell the first one is not kept waiting.
        After a round that claimed some, `tick` leaves the rest of the interval: users falling
        due meanwhile then go out together, in batches."""
        interval = self._runtime.settings.dispatch_interval_seconds
        earliest = self._runtime.redis.zrange(keys.DUE, 0, 0, withscores=True)
        if not earliest:
            return interval
        return max(0.0, min(interval, float(earliest[0][1]) - time.time()))

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

    def run_once(self) -> int:
        """One round that never raises: users claimed, or 0 when the round failed."""
        try:
            claimed = self.tick()
        except Exception as error:  # noqa: BLE001 - whatever it is, the dispatcher must go on
            self._failed(error)
            return 0
        self.failures = 0
        self.last_error = None
        self.last_loop_at = time.time()
        return claimed

    def backoff(self) -> float:
        """Seconds to wait after `failures` failed rounds: doubling from the dispatch interval,
        capped at ERROR_BACKOFF_MAX_SECONDS so a recovered Redis or broker is used again soon."""
        interval = self._runtime.settings.dispatch_interval_seconds
        return float(min(ERROR_BACKOFF_MAX_SECONDS, interval * 2 ** min(self.failures, 32)))

    def _failed(self, error: Exception) -> None:
        self.failures += 1
        self.last_error = type(error).__name__
        stats = self._runtime.stats
        stats.incr("dispatcher_errors_total", type=self.last_error)
        # One line for the first failure and then one every 50, so an outage cannot flood the log;
        # the first of an unexpected kind (not Redis or the network) with its traceback.
        if self.failures == 1 or self.failures % 50 == 0:
            unexpected = self.failures == 1 and not isinstance(error, redis.RedisError | OSError)
            log.warning(
                "dispatcher_error",
                error_type=self.last_error,
                error=str(error)[:500],
                failures=self.failures,
                stalled_seconds=round(time.time() - self.last_loop_at, 1),
                **({"exc_info": error} if unexpected else {}),
            )
        with contextlib.suppress(Exception):  # Redis may be what failed: kept for the next flush
            stats.flush()

    def beat(self) -> None:
        """Write the heartbeat when it is due (every HEARTBEAT_SECONDS, or a third of
        DISPATCHER_STALL_SECONDS if that is shorter), even after a failed round:
        it carries the time of the last successful one, which is how a stall is seen."""
        now = time.monotonic()
        if now < self._next_heartbeat:
            return
        try:
            self._runtime.redis.set(
                keys.worker_heartbeat(self._hostname),
                json.dumps(self.heartbeat_record()),
                ex=HEARTBEAT_SECONDS * 3,
            )
        except (redis.RedisError, OSError):
            return  # Redis is down: the key expires and the worker drops out of `status`
        self._next_heartbeat = now + self._heartbeat_every

    def heartbeat_record(self) -> dict[str, object]:
        """What the heartbeat says: who, when, and how the dispatcher is doing."""
        return {
            "hostname": self._hostname,
            "at": time.time(),
            "concurrency": self._runtime.settings.worker_concurrency,
            "mode": self._runtime.settings.mode_label,
            "loop_at": self.last_loop_at,
            "failures": self.failures,
            "last_error": self.last_error,
        }
