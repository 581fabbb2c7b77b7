"""Counters and histograms kept in Redis, so that every process adds to the same numbers.

Web, workers and beat are separate processes (often on separate machines); prometheus-client's
multiprocess mode only joins processes that share a directory. Counting in one Redis hash joins
them all, and `/metrics` renders the hash (see web/metrics.py). Increments are buffered and sent
in one script call per flush, so the hot paths pay one round trip per batch, not per event.

A field of `stats` is `name` or `name|label=value`; histogram buckets are
`name_bucket|le=X`, with `name_sum` and `name_count`.

The same call carries this minute's share of the counters (history.py) and the per-user
trace entries buffered since the last flush (trace.py): they cost no round trip of their own.
"""

from __future__ import annotations

import functools
import math
import threading
import time
from collections import Counter
from typing import Any

import redis

from sync_worker import lua
from sync_worker import redis_keys as keys
from sync_worker.telemetry import history
from sync_worker.telemetry.trace import TraceLog

_FLUSH = lua.script("telemetry/stats_flush.lua")

LATENCY_BUCKETS = (0.5, 1, 2, 2.5, 5, 10, 30, 60, 300, 1800, 3600, 86400)
"""Seconds from the first event of a change to its PATCH succeeding."""


def field_name(name: str, **labels: str) -> str:
    """The hash field of a counter with labels."""
    if not labels:
        return name
    return name + "|" + ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


@functools.cache
def _buckets(name: str) -> tuple[tuple[float, str], ...]:
    """A histogram's buckets: each upper bound and its field, `+Inf` last. Built once per name
    (the sync observes one latency per user)."""
    bounds = [
        (float(bound), field_name(name + "_bucket", le=str(bound))) for bound in LATENCY_BUCKETS
    ]
    return (*bounds, (math.inf, field_name(name + "_bucket", le="+Inf")))


class Stats:
    """Buffered increments of shared counters."""

    def __init__(self, client: redis.Redis, *, trace: TraceLog | None = None) -> None:
        self._redis = client
        self.trace = trace if trace is not None else TraceLog()
        """Per-user trace entries, sent with the counters."""
        self._lock = threading.Lock()
        self._buffer: Counter[str] = Counter()
        self._sums: dict[str, float] = {}
        self._flush = client.register_script(_FLUSH)

    def incr(self, name: str, amount: int = 1, **labels: str) -> None:
        """Add to a counter (sent on the next flush)."""
        with self._lock:
            self._buffer[field_name(name, **labels)] += amount

    def observe(self, name: str, seconds: float) -> None:
        """Record one observation in a histogram."""
        with self._lock:
            for bound, bucket in _buckets(name):
                if seconds <= bound:
                    self._buffer[bucket] += 1
            self._buffer[name + "_count"] += 1
            self._sums[name + "_sum"] = self._sums.get(name + "_sum", 0.0) + seconds

    def flush(self) -> None:
        """Send what was buffered, in one script call; on a Redis error the counts and trace
        entries are kept for the next flush."""
        with self._lock:
            counts, sums = self._buffer, self._sums
            self._buffer, self._sums = Counter(), {}
        traced = self.trace.drain()
        if not counts and not sums and not traced:
            return
        minute = history.minute_counts(counts)
        args: list[Any] = [
            len(counts),
            len(sums),
            len(minute),
            history.HISTORY_TTL_SECONDS,
            self.trace.max_entries,
            int(self.trace.retention_seconds),
        ]
        for pairs in (counts, sums, minute):
            for key, amount in pairs.items():
                args += (key, amount)
        args += [data for _, data in traced]
        minute_key = keys.history(history.minute_of(time.time()))
        trace_keys = [keys.trace(user_id) for user_id, _ in traced]
        try:
            self._flush(keys=[keys.STATS, minute_key, *trace_keys], args=args)
        except redis.RedisError:
            with self._lock:
                self._buffer.update(counts)
                for key, total in sums.items():
                    self._sums[key] = self._sums.get(key, 0.0) + total
            self.trace.put_back(traced)
            raise

    def read(self) -> dict[str, float]:
        """Every counter as it stands in Redis."""
        raw = self._redis.hgetall(keys.STATS)
        return {(k.decode() if isinstance(k, bytes) else k): float(v) for k, v in raw.items()}
