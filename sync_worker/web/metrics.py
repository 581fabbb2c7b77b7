"""`GET /metrics`: Prometheus text format, every name prefixed `recur_sync_`.

Why the counters live in Redis: web, workers and beat are separate processes, usually on
separate machines or containers. prometheus-client's multiprocess mode only joins processes
that share one directory on one host (and needs cleanup of dead PIDs' files), so it would show
each machine's slice, and scraping every worker would need service discovery. Instead every
process adds to one Redis hash (stats.py) that is already shared and durable; any web replica
renders the whole system's totals, and a restarted process loses nothing. Each scrape costs a
few Redis reads.

The custom collector reads that hash at scrape time (counters and the sync latency histogram)
and adds live gauges read from the same place as `sync-worker status`. When Redis does not
answer, the scrape still succeeds with `recur_sync_redis_up 0`, so an alert can tell "Redis is
down" from "the web process is down".
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterator
from datetime import datetime

import redis
from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry

from sync_worker.ops.status import StatusSnapshot, gather_status, last_finished_reconciliation
from sync_worker.runtime import Runtime
from sync_worker.web.state import web_state

PREFIX = "recur_sync_"
HISTOGRAMS = ("sync_latency_seconds",)

COUNTERS: dict[str, str] = {
    "events_received_total": "Webhook deliveries received.",
    "events_accepted_total": "Events accepted and stored durably.",
    "events_duplicate_total": "Deliveries of an event id already accepted.",
    "events_stale_total": "Accepted events older than what was already applied or pending.",
    "events_rejected_total": "Deliveries refused, by reason.",
    "patches_total": "PATCH calls to Recur, by status class.",
    "sync_retries_total": "Retries of a sync, quick (in the task) or scheduled (handed back).",
    "read_backs_total": "Reads of a customer after an ambiguous PATCH, by outcome.",
    "syncs_applied_total": "Pending changes Recur applied.",
    "bound_by_email_total": "Customers without an external id bound to a user found by email.",
    "lost_answers_confirmed_total": "404/409 after a lost answer where a read showed it applied.",
    "dead_letters_total": "Changes moved to the dead-letter queue, by reason.",
    "dead_letters_trimmed_total": "Dead letters deleted after the retention period.",
    "claims_requeued_total": "Claims whose lease lapsed and were offered again.",
    "sync_paused_total": "Times the sync paused on 401/403.",
    "breaker_transitions_total": "Circuit breaker transitions, by the state entered.",
    "ops_webhooks_total": "Operational webhooks, by outcome (delivered, retried, gave_up, ...).",
    "dispatcher_errors_total": "Dispatcher rounds that failed, by exception type.",
    "consumer_restarts_total": "Celery consumers the watchdog restarted: no task taken while "
    "the sync queue had some waiting.",
}
HISTOGRAM_HELP = {
    "sync_latency_seconds": "Seconds from the first event of a change to Recur applying it.",
}

router = APIRouter()


def _parse(field: str) -> tuple[str, dict[str, str]]:
    """`name|k=v,k2=v2` -> (name, labels)."""
    name, _, label_text = field.partition("|")
    labels = dict(pair.split("=", 1) for pair in label_text.split(",") if "=" in pair)
    return name, labels


def counter_families(values: dict[str, float]) -> Iterator[Metric]:
    """The counters of the stats hash; known unlabelled ones are shown as 0 before they move."""
    grouped: dict[str, list[tuple[dict[str, str], float]]] = defaultdict(list)
    for field, value in values.items():
        name, labels = _parse(field)
        if name.removesuffix("_bucket").removesuffix("_sum").removesuffix("_count") in HISTOGRAMS:
            continue
        grouped[name].append((labels, value))
    for name in COUNTERS:
        grouped.setdefault(name, [])
    for name, samples in sorted(grouped.items()):
        label_names = sorted({key for labels, _ in samples for key in labels})
        family = CounterMetricFamily(
            PREFIX + name, COUNTERS.get(name, name.replace("_", " ")), labels=label_names
        )
        if not samples and not label_names:
            family.add_metric([], 0.0)
        for labels, value in samples:
            family.add_metric([labels.get(key, "") for key in label_names], value)
        yield family


def _le(bound: float) -> str:
    """A bucket bound as Prometheus writes it (`1.0`, `+Inf`)."""
    return "+Inf" if bound == math.inf else repr(float(bound))


def histogram_families(values: dict[str, float]) -> Iterator[Metric]:
    """The histograms of the stats hash (cumulative buckets, as Stats.observe writes them)."""
    for name in HISTOGRAMS:
        buckets: list[tuple[float, float]] = []
        for field, value in values.items():
            field_name, labels = _parse(field)
            if field_name == name + "_bucket" and "le" in labels:
                buckets.append((float(labels["le"]), value))
        if not any(bound == math.inf for bound, _ in buckets):
            buckets.append((math.inf, values.get(name + "_count", 0.0)))
        family = HistogramMetricFamily(PREFIX + name, HISTOGRAM_HELP[name])
        family.add_metric(
            [],
            [(_le(bound), count) for bound, count in sorted(buckets)],
            sum_value=values.get(name + "_sum", 0.0),
        )
        yield family


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(PREFIX + name, documentation, value=value)


def gauge_families(runtime: Runtime, values: dict[str, float]) -> Iterator[Metric]:
    """Live numbers: queues, pending users, dead letters, pause, workers, collapse ratio."""
    snapshot = gather_status(runtime)
    queues = GaugeMetricFamily(
        PREFIX + "queue_depth", "Messages waiting in a Celery queue.", labels=["queue"]
    )
    for queue, depth in snapshot.queues.items():
        queues.add_metric([queue], depth)
    yield queues
    yield _gauge("pending_users", "Users with a pending change waiting.", snapshot.pending_users)
    yield _gauge("due_users", "Pending users whose time to send has come.", snapshot.due_now)
    yield _gauge("inflight_users", "Users a worker is sending now.", snapshot.inflight)
    yield _gauge(
        "retrying_users", "Pending users waiting for a scheduled retry.", snapshot.retrying_users
    )
    dead = GaugeMetricFamily(
        PREFIX + "dead_letters", "Dead letters in the queue now, by reason.", labels=["reason"]
    )
    for reason, count in snapshot.dead_letters.items():
        dead.add_metric([reason], count)
    yield dead
    yield _gauge("paused", "1 while the sync is paused on 401/403.", float(bool(snapshot.paused)))
    yield _gauge("cooldown_seconds", "Seconds left of a 429 cool-down.", snapshot.cooldown_seconds)
    yield _gauge("workers_alive", "Workers with a recent heartbeat.", len(snapshot.workers))
    yield from dispatcher_families(snapshot)
    yield _gauge(
        "redis_writes_refused",
        "1 while Redis answers but refuses writes (a replica, at maxmemory): intake answers 503.",
        float(snapshot.redis_refusal is not None),
    )
    yield _gauge(
        "redis_replicas_connected",
        "Redis replicas in sync with the primary (online, acknowledged within 10 s).",
        snapshot.replicas_online,
    )
    yield _gauge(
        "redis_min_replicas",
        "REDIS_MIN_REPLICAS: replicas a write needs; with fewer connected intake answers 503.",
        snapshot.min_replicas,
    )
    yield _gauge(
        "oldest_due_age_seconds",
        "Seconds the most overdue pending user has waited past its due time.",
        snapshot.oldest_due_seconds,
    )
    yield from breaker_families(snapshot)
    yield from reconciliation_families(runtime)
    applied = values.get("syncs_applied_total", 0.0)
    if applied:
        yield _gauge(
            "debounce_collapse_ratio",
            "Events accepted per PATCH applied: how much the debounce saves.",
            values.get("events_accepted_total", 0.0) / applied,
        )


def dispatcher_families(snapshot: StatusSnapshot) -> Iterator[Metric]:
    """Each live worker's dispatcher: how long since its last successful round, and how many
    are stalled (past DISPATCHER_STALL_SECONDS)."""
    yield _gauge(
        "dispatcher_stalled_workers",
        "Live workers whose dispatcher has not finished a round for DISPATCHER_STALL_SECONDS.",
        len(snapshot.stalled_workers),
    )
    ages = GaugeMetricFamily(
        PREFIX + "dispatcher_last_loop_age_seconds",
        "Seconds since a live worker's dispatcher last finished a round.",
        labels=["worker"],
    )
    for worker in snapshot.workers:
        ages.add_metric([str(worker.get("hostname"))], float(worker["dispatcher_seconds_ago"]))
    yield ages


def breaker_families(snapshot: StatusSnapshot) -> Iterator[Metric]:
    """The circuit breaker: open or not, its state, the window's counts, the cool-down."""
    breaker = snapshot.breaker
    state = str(breaker.get("state", "closed"))
    yield _gauge(
        "breaker_open",
        "1 while the circuit breaker holds sends (open or half-open).",
        float(state != "closed"),
    )
    states = GaugeMetricFamily(
        PREFIX + "breaker_state", "1 for the circuit breaker's current state.", labels=["state"]
    )
    for name in ("closed", "open", "half_open"):
        states.add_metric([name], float(name == state))
    yield states
    yield _gauge(
        "breaker_window_calls",
        "Calls to Recur in the breaker's sliding window.",
        breaker.get("window_calls", 0),
    )
    yield _gauge(
        "breaker_window_failures",
        "Transient failures in the breaker's sliding window.",
        breaker.get("window_failures", 0),
    )
    yield _gauge(
        "breaker_cool_down_seconds",
        "The breaker's current cool-down (doubled after each failed probe, capped).",
        breaker.get("cool_down_seconds", 0),
    )


def reconciliation_families(runtime: Runtime) -> Iterator[Metric]:
    """The newest finished reconciliation: when, how long, and how much drift it found (absent
    before the first one)."""
    report = last_finished_reconciliation(runtime.redis)
    if report is None or not report.get("finished_at"):
        return
    yield _gauge(
        "reconciliation_last_finished_timestamp_seconds",
        "Unix time the newest finished reconciliation ended.",
        datetime.fromisoformat(str(report["finished_at"])).timestamp(),
    )
    yield _gauge(
        "reconciliation_last_scanned",
        "Customers the newest finished reconciliation scanned.",
        float(report.get("scanned", 0)),
    )
    yield _gauge(
        "reconciliation_last_drifted",
        "Customers the newest finished reconciliation found drifted from the ledger.",
        float(report.get("drifted", 0)),
    )
    yield _gauge(
        "reconciliation_last_duration_seconds",
        "How long the newest finished reconciliation ran.",
        float(report.get("duration_seconds", 0)),
    )


class RedisStatsCollector(Collector):
    """Reads the shared counters and live gauges from Redis at each scrape."""

    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime

    def collect(self) -> Iterator[Metric]:
        """Every family, or only `redis_up 0` when Redis does not answer."""
        try:
            values = self._runtime.stats.read()
            families = [
                *counter_families(values),
                *histogram_families(values),
                *gauge_families(self._runtime, values),
            ]
        except (redis.RedisError, OSError):
            yield _gauge("redis_up", "1 when Redis answered this scrape.", 0)
            return
        yield _gauge("redis_up", "1 when Redis answered this scrape.", 1)
        yield from families


def render(runtime: Runtime) -> bytes:
    """The exposition text of one scrape."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(RedisStatsCollector(runtime))
    return generate_latest(registry)


@router.get("/metrics")
def metrics(request: Request) -> Response:
    """Prometheus scrape endpoint (plain `def`: Redis reads run in the thread pool)."""
    return Response(render(web_state(request).runtime), media_type=CONTENT_TYPE_LATEST)
