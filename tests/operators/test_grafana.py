"""deploy/grafana/recur-sync.json: a Grafana dashboard whose every query names only series that
`/metrics` of the real web process exports (scraped from `sync-worker web`, not assumed)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import httpx
import redis
from prometheus_client.parser import text_string_to_metric_families

from sync_worker import redis_keys as keys
from sync_worker.telemetry.stats import Stats
from tests.fixtures.stack import Stack

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "recur-sync.json"
SERIES = re.compile(r"\brecur_sync_[a-z0-9_]+\b")
WANTED = (
    "events_accepted_total",
    "events_rejected_total",
    "patches_total",
    "sync_latency_seconds_bucket",
    "due_users",
    "retrying_users",
    "dead_letters",
    "breaker_state",
    "redis_replicas_connected",
    "reconciliation_last_drifted",
    "reconciliation_last_duration_seconds",
)
"""What the issue asks the dashboard to show: intake and refusals, PATCHes by status, latency
from the histogram, backlog, dead letters by reason, breaker, reconciliation drift and duration."""


def panels() -> list[dict[str, Any]]:
    return [p for p in json.loads(DASHBOARD.read_text())["panels"] if p["type"] != "row"]


def queries() -> list[str]:
    return [target["expr"] for panel in panels() for target in panel["targets"]]


def with_some_history(client: redis.Redis) -> None:
    """Counters with each of their labels, and a finished reconciliation, as a day would leave."""
    stats = Stats(client)
    stats.incr("events_received_total")
    stats.incr("events_accepted_total")
    stats.incr("events_duplicate_total")
    stats.incr("events_stale_total")
    stats.incr("events_rejected_total", reason="signature")
    stats.incr("patches_total", status_class="2xx")
    stats.incr("sync_retries_total", kind="quick")
    stats.incr("dead_letters_total", reason="rejected")
    stats.observe("sync_latency_seconds", 1.5)
    stats.flush()
    report = {
        "status": "finished",
        "finished_at": "2026-11-24T03:01:00.000+00:00",
        "scanned": 3,
        "drifted": 1,
        "duration_seconds": 42.5,
    }
    client.lpush(keys.RECONCILE_REPORTS, json.dumps(report))


def test_every_panel_reads_only_exported_series(web_stack: Stack) -> None:
    with_some_history(web_stack.redis)
    text = httpx.get(web_stack.web_url + "/metrics", timeout=10).text
    exported = {
        sample.name for family in text_string_to_metric_families(text) for sample in family.samples
    }
    used: set[str] = set()
    for panel in panels():
        assert panel["targets"], f"panel {panel['title']!r} has no query"
        for target in panel["targets"]:
            names = set(SERIES.findall(target["expr"]))
            assert names, f"{panel['title']!r}: {target['expr']} reads no recur_sync_ series"
            assert names <= exported, f"{panel['title']!r}: not exported: {names - exported}"
            used |= names
    assert {"recur_sync_" + name for name in WANTED} <= used


def test_the_dashboard_is_importable() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] == "recur-sync"
    assert dashboard["templating"]["list"][0]["type"] == "datasource"
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in panels():
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        refs = [target["refId"] for target in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]
    assert any("histogram_quantile(0.99" in expr for expr in queries())
