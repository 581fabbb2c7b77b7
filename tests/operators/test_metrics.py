"""`GET /metrics`: shared Redis counters and live gauges in Prometheus text format."""

from __future__ import annotations

import json

import httpx
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from sync_worker.runtime import Runtime
from sync_worker.telemetry.stats import Stats
from tests.fixtures.redis_server import free_port
from tests.operators.conftest import make_dead_letter, serve


def scrape(web: httpx.Client) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = web.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=")
    samples: list[Sample] = [
        sample
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    ]
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for s in samples}


def test_counters_from_every_process_and_live_gauges(runtime: Runtime, web: httpx.Client) -> None:
    # Two other processes' worth of counts, added to the same Redis hash.
    for _ in range(2):
        other = Stats(runtime.redis)
        other.incr("events_accepted_total", 5)
        other.incr("events_rejected_total", reason="signature")
        other.incr("syncs_applied_total", 2)
        other.observe("sync_latency_seconds", 0.3)
        other.observe("sync_latency_seconds", 4)
        other.flush()
    make_dead_letter(runtime, "user_a")
    runtime.flow.pause(reason="unauthorized", status=401, message="bad key")
    runtime.redis.set("rs:worker:w1@h", json.dumps({"hostname": "w1@h", "at": 0}))
    runtime.redis.rpush("sync", "message")

    m = scrape(web)
    assert m[("recur_sync_redis_up", ())] == 1
    assert m[("recur_sync_events_accepted_total", ())] == 10
    assert m[("recur_sync_events_rejected_total", (("reason", "signature"),))] == 2
    assert m[("recur_sync_dead_letters_total", (("reason", "not_found"),))] == 1
    assert m[("recur_sync_patches_total", (("status_class", "4xx"),))] == 1
    assert m[("recur_sync_claims_requeued_total", ())] == 0  # known counters start at 0
    assert m[("recur_sync_sync_latency_seconds_bucket", (("le", "0.5"),))] == 2
    assert m[("recur_sync_sync_latency_seconds_bucket", (("le", "2.0"),))] == 2
    assert m[("recur_sync_sync_latency_seconds_bucket", (("le", "5.0"),))] == 4
    assert m[("recur_sync_sync_latency_seconds_bucket", (("le", "+Inf"),))] == 4
    assert m[("recur_sync_sync_latency_seconds_count", ())] == 4
    assert m[("recur_sync_sync_latency_seconds_sum", ())] == pytest.approx(8.6)
    assert m[("recur_sync_debounce_collapse_ratio", ())] == pytest.approx(10 / 4)
    assert m[("recur_sync_dead_letters", (("reason", "not_found"),))] == 1
    assert m[("recur_sync_dead_letters", (("reason", "conflict"),))] == 0
    assert m[("recur_sync_queue_depth", (("queue", "sync"),))] == 1
    assert m[("recur_sync_paused", ())] == 1
    assert m[("recur_sync_workers_alive", ())] == 1
    assert m[("recur_sync_pending_users", ())] == 0


def test_redis_down_still_answers(runtime: Runtime) -> None:
    unreachable = redis.Redis(host="127.0.0.1", port=free_port(), socket_connect_timeout=1)
    with serve(Runtime(runtime.settings, client=unreachable)) as web:
        assert scrape(web) == {("recur_sync_redis_up", ()): 0}
