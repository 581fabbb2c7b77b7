"""The stats flush against a real Redis: counters, sums, this minute's history and the buffered
trace entries, all in one command."""

from __future__ import annotations

import json

import pytest
import redis

from sync_worker import redis_keys as keys
from sync_worker.telemetry import history
from sync_worker.telemetry.stats import Stats
from sync_worker.telemetry.trace import TraceLog


def calls(client: redis.Redis) -> dict[str, int]:
    """Commands Redis ran since the last reset, by name (those a script ran included)."""
    stats = client.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(entry["calls"]) for name, entry in stats.items()}


def test_one_flush_is_one_command(redis_client: redis.Redis) -> None:
    trace = TraceLog(retention_seconds=3600, max_entries=2)
    stats = Stats(redis_client, trace=trace)
    stats.incr("warm_up_total")
    stats.flush()  # the first call also loads the script into Redis
    for user in ("u1", "u2", "u1", "u1"):
        stats.incr("patches_total", status_class="2xx")
        stats.incr("syncs_applied_total")
        stats.observe("sync_latency_seconds", 1.5)
        trace.add(user, "attempt", result="applied")
    redis_client.config_resetstat()

    stats.flush()

    ran = calls(redis_client)
    # Not one command per counter and three per trace entry, each packed and parsed by the
    # worker: one call (the script's own commands are counted beside it).
    assert ran["evalsha"] + ran.get("eval", 0) == 1
    assert "multi" not in ran
    counters = Stats(redis_client).read()
    assert counters["patches_total|status_class=2xx"] == 4
    assert counters["syncs_applied_total"] == 4
    assert "sync_latency_seconds_bucket|le=1" not in counters
    assert counters["sync_latency_seconds_bucket|le=2"] == 4
    assert counters["sync_latency_seconds_bucket|le=+Inf"] == 4
    assert counters["sync_latency_seconds_sum"] == pytest.approx(6.0)
    minutes = redis_client.keys(keys.HISTORY + "*")
    (minute,) = minutes
    kept = redis_client.hgetall(minute)
    assert kept["patches_total|status_class=2xx"] == "4"
    assert "syncs_applied_total" not in kept  # only the counters kept per minute
    assert 0 < redis_client.ttl(minute) <= history.HISTORY_TTL_SECONDS
    u1 = [json.loads(entry) for entry in redis_client.lrange(keys.trace("u1"), 0, -1)]
    assert [entry["kind"] for entry in u1] == ["attempt", "attempt"]  # capped at two
    assert redis_client.llen(keys.trace("u2")) == 1
    assert 0 < redis_client.ttl(keys.trace("u2")) <= 3600


def test_a_failed_flush_keeps_everything_for_the_next(redis_client: redis.Redis) -> None:
    trace = TraceLog()
    stats = Stats(redis_client, trace=trace)
    stats.incr("patches_total", status_class="2xx")
    stats.observe("sync_latency_seconds", 0.2)
    trace.add("u1", "attempt", result="applied")
    redis_client.set(keys.STATS, "not a hash")  # every HINCRBY on it fails

    with pytest.raises(redis.ResponseError):
        stats.flush()

    redis_client.delete(keys.STATS)
    stats.flush()
    counters = stats.read()
    assert counters["patches_total|status_class=2xx"] == 1
    assert counters["sync_latency_seconds_sum"] == pytest.approx(0.2)
    assert redis_client.llen(keys.trace("u1")) == 1
