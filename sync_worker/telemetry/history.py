"""The last 24 hours minute by minute, for `GET /admin/api/history` and the charts on `/admin`.

`history:{minute}` hash (minute = unix time // 60), expiring HISTORY_TTL_SECONDS after it was
last written:
- the counters of that minute, named as in the `stats` hash (`name` or `name|label=value`),
  added by `Stats.flush` in the call it makes anyway (no round trip of its own);
- gauges `g:{name}` (backlog due now, users retrying, ...), the last value sampled in that
  minute by a worker's dispatcher at each sweep (`sample_gauges`).

Reading turns them into series, one value per minute (None where nothing was written): events
accepted and refused, PATCHes by status class, dead letters by reason, backlog due and retrying,
sync latency p50/p99 (estimated from that minute's histogram buckets, as Prometheus'
`histogram_quantile` does) and the breaker's state.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import redis

from sync_worker import redis_keys as keys

HISTORY_TTL_SECONDS = 25 * 3600
MAX_MINUTES = 24 * 60
COUNTED = (
    "events_accepted_total",
    "events_rejected_total",
    "events_duplicate_total",
    "events_stale_total",
    "patches_total",
    "dead_letters_total",
    "sync_latency_seconds_bucket",
    "sync_latency_seconds_count",
)
"""Counters kept per minute (the others are only in the `stats` totals)."""
BREAKER_LEVELS = {"closed": 0, "half_open": 1, "open": 2}
"""The breaker gauge: 0 closed, 1 half-open, 2 open."""
GAUGES = ("due_now", "pending", "retrying", "inflight", "breaker", "paused")


def minute_of(moment: float) -> int:
    """The minute (unix time // 60) a moment falls in."""
    return int(moment // 60)


def minute_counts(counts: Mapping[str, int]) -> dict[str, int]:
    """The increments of a flush that are kept per minute as well (`Stats.flush` adds them to
    this minute's hash, which expires HISTORY_TTL_SECONDS after)."""
    return {
        name: amount
        for name, amount in counts.items()
        if name.partition("|")[0] in COUNTED and amount
    }


def write_gauges(client: redis.Redis, gauges: Mapping[str, float], *, now: float) -> None:
    """Set this minute's gauges (one round trip; the last sample of a minute wins)."""
    key = keys.history(minute_of(now))
    pipe = client.pipeline(transaction=False)
    pipe.hset(key, mapping={f"g:{name}": repr(float(value)) for name, value in gauges.items()})
    pipe.expire(key, HISTORY_TTL_SECONDS)
    pipe.execute()


def quantile(q: float, buckets: Mapping[float, float]) -> float | None:
    """The q-quantile of cumulative bucket counts {upper bound: count}, interpolated linearly
    inside the bucket it falls in; None without observations."""
    bounds = sorted(buckets)
    total = buckets.get(math.inf, 0.0)
    if total <= 0:
        return None
    rank = q * total
    lower, below = 0.0, 0.0
    for bound in bounds:
        count = buckets[bound]
        if count >= rank:
            if math.isinf(bound):
                return lower  # past the last finite bound: the best we can say
            inside = count - below
            return lower + (bound - lower) * ((rank - below) / inside if inside else 1.0)
        lower, below = bound, count
    return lower


@dataclass(frozen=True)
class History:
    """Series of one value per minute, oldest first, starting at `start` (unix time)."""

    start: float
    step_seconds: int
    series: dict[str, list[float | None]]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "start": self.start,
            "step_seconds": self.step_seconds,
            "points": len(next(iter(self.series.values()), [])),
            "series": self.series,
        }


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _sum(raw: dict[str, float], name: str, **labels: str) -> float:
    """The sum of a counter's fields whose labels include `labels`."""
    total = 0.0
    for field, value in raw.items():
        base, _, label_text = field.partition("|")
        if base != name:
            continue
        pairs = dict(p.split("=", 1) for p in label_text.split(",") if "=" in p)
        if all(pairs.get(k) == v for k, v in labels.items()):
            total += value
    return total


def _point(raw: dict[str, float]) -> dict[str, float | None]:
    buckets = {
        float(field.partition("le=")[2]): value
        for field, value in raw.items()
        if field.startswith("sync_latency_seconds_bucket|")
    }
    point: dict[str, float | None] = {
        "events_accepted": _sum(raw, "events_accepted_total"),
        "events_refused": _sum(raw, "events_rejected_total"),
        "events_duplicate": _sum(raw, "events_duplicate_total"),
        "events_stale": _sum(raw, "events_stale_total"),
    }
    for status_class in ("2xx", "4xx", "429", "5xx", "error"):
        point[f"patches_{status_class}"] = _sum(raw, "patches_total", status_class=status_class)
    for reason in ("not_found", "conflict", "rejected", "retries_exhausted"):
        point[f"dead_letters_{reason}"] = _sum(raw, "dead_letters_total", reason=reason)
    point["latency_p50_seconds"] = quantile(0.5, buckets)
    point["latency_p99_seconds"] = quantile(0.99, buckets)
    for name in GAUGES:
        point[name] = raw.get(f"g:{name}")
    return point


def read(client: redis.Redis, *, minutes: int = MAX_MINUTES, now: float | None = None) -> History:
    """The last `minutes` minutes (this one included), in one round trip."""
    minutes = max(1, min(minutes, MAX_MINUTES))
    last = minute_of(time.time() if now is None else now)
    first = last - minutes + 1
    pipe = client.pipeline(transaction=False)
    for minute in range(first, last + 1):
        pipe.hgetall(keys.history(minute))
    series: dict[str, list[float | None]] = {}
    for flat in pipe.execute():
        raw = {_text(k): float(_text(v)) for k, v in flat.items()}
        for name, value in _point(raw).items():
            series.setdefault(name, []).append(value)
    return History(start=first * 60.0, step_seconds=60, series=series)
