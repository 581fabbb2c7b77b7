"""Flow control shared through Redis by every worker and the reconciliation.

- A token bucket bounds calls to Recur per second across all processes, so adding workers never
  floods the API. It reads Redis' own clock, so machines with skewed clocks agree.
- A cool-down, set from a 429's `Retry-After`, stops everybody, not only the worker that was told.
- A pause, set on 401/403, stops claiming work until the key is fixed.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import Any, cast

import redis

from sync_worker import lua
from sync_worker import redis_keys as keys

_TAKE = lua.script("pipeline/flow_take.lua")

_COOL_DOWN = lua.script("pipeline/flow_cool_down.lua")


RESERVE_MAX_TOKENS = 50
"""Tokens one round trip reserves at most (and never more than a fifth of the burst). At high
rates every round trip counts: one waits behind whatever script Redis is running (a
reconciliation page's comparison takes most of a millisecond), which reserving 10 at a time made
a tenth of a fast reconciliation's time (bench/reconcile.py)."""
RESERVE_SECONDS = 0.5
"""Reserved tokens not spent by then are dropped: the shared bucket stays honest."""


class Throttled(Exception):
    """No call may be made for longer than the caller may wait; try again after `wait`."""

    def __init__(self, wait: float) -> None:
        super().__init__(f"rate limited for {wait:.2f} s")
        self.wait = wait


class FlowControl:
    """The shared rate limit, cool-down and pause.

    `notify(type, data)` hears each pause and resume (`sync.paused`, `sync.resumed`), whoever
    caused it: a worker's 401, the auth probe, or an operator's resume.
    """

    def __init__(
        self,
        client: redis.Redis,
        *,
        rate_per_second: float,
        burst: int,
        sleep: Callable[[float], None] = time.sleep,
        notify: Callable[[str, dict[str, Any]], None] | None = None,
    ) -> None:
        self._redis = client
        self._notify = notify
        self._rate = rate_per_second
        self._burst = burst
        self._sleep = sleep
        self._take = client.register_script(_TAKE)
        self._cool = client.register_script(_COOL_DOWN)
        # Tokens are fetched a few at a time and spent locally for a short while, so that a busy
        # process pays one round trip per handful of calls, not one per call.
        self._prefetch = max(1, min(RESERVE_MAX_TOKENS, burst // 5))
        self._reserve = 0
        self._reserve_until = 0.0
        self._lock = threading.Lock()

    def _take_tokens(self, wanted: int) -> tuple[int, float]:
        granted, wait = cast(
            list[Any],
            self._take(
                keys=[keys.RATE_BUCKET, keys.COOLDOWN], args=[self._rate, self._burst, wanted]
            ),
        )
        return int(granted), float(wait)

    def try_acquire(self) -> float:
        """Take a token now (0.0) or say how many seconds until one may be taken."""
        granted, wait = self._take_tokens(1)
        return 0.0 if granted else max(wait, 1e-6)

    def acquire(self, *, max_wait: float) -> None:
        """Block until a call may be made; `Throttled` if that would take longer than `max_wait`."""
        with self._lock:
            if self._reserve > 0 and time.monotonic() < self._reserve_until:
                self._reserve -= 1
                return
        waited = 0.0
        while True:
            granted, wait = self._take_tokens(self._prefetch)
            if granted:
                with self._lock:
                    self._reserve = granted - 1
                    self._reserve_until = time.monotonic() + RESERVE_SECONDS
                return
            if waited + wait > max_wait:
                raise Throttled(wait)
            self._sleep(wait)
            waited += wait

    def cool_down(self, seconds: float) -> None:
        """Stop every caller for `seconds` (from a 429's Retry-After)."""
        with self._lock:
            self._reserve = 0
        self._cool(keys=[keys.COOLDOWN], args=[max(seconds, 0.001)])

    def cooldown_remaining(self) -> float:
        """Seconds left of the shared cool-down, 0 when there is none."""
        raw = self._redis.get(keys.COOLDOWN)
        if raw is None:
            return 0.0
        return max(0.0, float(cast(bytes, raw)) - time.time())

    def pause(self, *, reason: str, status: int | None, message: str) -> bool:
        """Pause the sync for everybody; True if this call paused it (it was running)."""
        record = {"reason": reason, "status": status, "message": message, "since": time.time()}
        paused = bool(self._redis.set(keys.PAUSED, json.dumps(record), nx=True))
        if paused and self._notify is not None:
            self._notify("sync.paused", {"reason": reason, "status": status, "message": message})
        return paused

    def resume(self) -> bool:
        """Lift the pause; True if it was paused."""
        resumed = bool(self._redis.delete(keys.PAUSED))
        if resumed and self._notify is not None:
            self._notify("sync.resumed", {})
        return resumed

    def paused(self) -> dict[str, Any] | None:
        """Why the sync is paused, or None when it runs."""
        raw = self._redis.get(keys.PAUSED)
        if raw is None:
            return None
        return cast(dict[str, Any], json.loads(cast(bytes, raw)))
