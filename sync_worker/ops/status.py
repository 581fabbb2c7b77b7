"""The operator's view of the system at one moment.

`sync-worker status`, `GET /admin/api/status`, the dashboard and the gauges of `/metrics` all
read it from here, so they never disagree. It only reads Redis; no web or CLI import.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from typing import Any, cast

import redis

from sync_worker import lua
from sync_worker import redis_keys as keys
from sync_worker.replication import replicas_online
from sync_worker.runtime import Runtime
from sync_worker.write_refusal import write_refusal

CELERY_QUEUES = ("sync", "maintenance")
"""The Celery queues (celery_app.SYNC_QUEUE and MAINTENANCE_QUEUE). Not imported from there:
importing celery_app builds the Celery app from the environment, which a reader should not do."""

_SCAN_BATCH = 1000
_RETRY_SLICE = 5000
_COUNT_RETRYING = lua.script("ops/status_count_retrying.lua")


@dataclass(frozen=True)
class StatusSnapshot:
    """Every number an operator looks at first, gathered in one pass."""

    mode: str
    queues: dict[str, int]
    pending_users: int
    due_now: int
    inflight: int
    retrying_users: int
    dead_letters: dict[str, int]
    workers: list[dict[str, Any]]
    paused: dict[str, Any] | None
    cooldown_seconds: float
    last_reconciliation: dict[str, Any] | None
    breaker: dict[str, Any] = field(default_factory=dict)
    oldest_due_seconds: float = 0.0
    """How long the most overdue user has been waiting past its due time (0 when none is)."""
    replicas_online: int = 0
    """Redis replicas in sync with the primary (`replication.replicas_online`)."""
    min_replicas: int = 0
    """REDIS_MIN_REPLICAS as this process resolves it."""
    redis_refusal: str | None = None
    """Why Redis refuses writes now (`write_refusal.py`), or None when it takes them."""
    collected_at: float = field(default_factory=time.time)

    @property
    def dead_letters_total(self) -> int:
        """Dead letters of every reason."""
        return sum(self.dead_letters.values())

    @property
    def stalled_workers(self) -> list[str]:
        """Live workers whose dispatcher has not finished a round for DISPATCHER_STALL_SECONDS."""
        return [str(w.get("hostname")) for w in self.workers if w.get("stalled")]

    @property
    def replicas_missing(self) -> bool:
        """Fewer replicas in sync than REDIS_MIN_REPLICAS: intake answers 503 to every event."""
        return self.replicas_online < self.min_replicas

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (`status --json`, the admin API)."""
        data = asdict(self)
        data["dead_letters_total"] = self.dead_letters_total
        data["workers_alive"] = len(self.workers)
        data["workers_stalled"] = self.stalled_workers
        data["replicas_missing"] = self.replicas_missing
        return data


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def format_age(seconds: float) -> str:
    """A short age such as `42s`, `7m`, `3h` or `12d`."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(max(seconds, 0))}s"


def queue_depths(client: redis.Redis) -> dict[str, int]:
    """Messages waiting in each Celery queue (those a worker already holds are not counted)."""
    pipe = client.pipeline(transaction=False)
    for name in CELERY_QUEUES:
        pipe.llen(name)
    return {name: int(depth) for name, depth in zip(CELERY_QUEUES, pipe.execute(), strict=True)}


def retrying_users(client: redis.Redis) -> int:
    """Users waiting in `due` whose last attempt failed (their pending `attempts` is above 0).

    Exact rather than a proxy such as "due in the future", which would also count every user
    still inside its debounce window. A short read-only script counts one slice of `due` per
    call inside Redis (100k users: about 20 calls of a few milliseconds each), so it neither
    ships every user to Python nor blocks Redis for long. Under churn the count is a moment's.
    """
    script = client.register_script(_COUNT_RETRYING)
    total = start = 0
    while True:
        seen, retrying = cast(
            list[int],
            script(keys=[keys.DUE], args=[start, start + _RETRY_SLICE - 1, keys.PENDING]),
        )
        total += int(retrying)
        if int(seen) < _RETRY_SLICE:
            return total
        start += _RETRY_SLICE


def worker_view(record: dict[str, Any], now: float, stall_seconds: float) -> dict[str, Any]:
    """A heartbeat record with its ages: `seen_seconds_ago` (the heartbeat), and
    `dispatcher_seconds_ago` (its dispatcher's last successful round), `stalled` past the
    threshold. A record without `loop_at` (a worker of an older version) counts its heartbeat."""
    seen = max(0.0, now - float(record.get("at", now)))
    loop = max(0.0, now - float(record.get("loop_at", record.get("at", now))))
    return {
        **record,
        "seen_seconds_ago": round(seen, 1),
        "dispatcher_seconds_ago": round(loop, 1),
        "stalled": loop > stall_seconds,
    }


def live_workers(client: redis.Redis, *, stall_seconds: float = 60.0) -> list[dict[str, Any]]:
    """The workers whose dispatcher wrote a heartbeat recently (the keys expire otherwise),
    each marked `stalled` when its dispatcher's last successful round is older than
    `stall_seconds` (DISPATCHER_STALL_SECONDS)."""
    names = sorted(
        _text(k) for k in client.scan_iter(match=keys.WORKER_HEARTBEAT + "*", count=_SCAN_BATCH)
    )
    if not names:
        return []
    now = time.time()
    workers = []
    for raw in cast(list[bytes | None], client.mget(names)):
        if raw is None:
            continue  # expired between the scan and the read
        workers.append(worker_view(cast(dict[str, Any], json.loads(raw)), now, stall_seconds))
    return workers


def sync_mode(own: str, workers: list[dict[str, Any]]) -> str:
    """Test or live: what the workers report (they hold the key that counts), else our own key's
    mode; a mix of both is said plainly, since it means two accounts share one Redis."""
    reported = sorted({str(w["mode"]) for w in workers if w.get("mode") not in (None, "unset")})
    if not reported:
        return own
    return reported[0] if len(reported) == 1 else "mixed: " + ", ".join(reported)


def last_reconciliation(client: redis.Redis) -> dict[str, Any] | None:
    """The newest reconciliation report (the list is kept newest first), or None."""
    raw = client.lindex(keys.RECONCILE_REPORTS, 0)
    if raw is None:
        return None
    try:
        return cast(dict[str, Any], json.loads(cast(bytes, raw)))
    except ValueError:
        return {"error": "the newest report is not valid JSON"}


def oldest_due_seconds(client: redis.Redis, now: float) -> float:
    """Seconds the earliest due user has waited past its due time: the age of the queue."""
    oldest = cast(list[tuple[Any, float]], client.zrange(keys.DUE, 0, 0, withscores=True))
    return round(max(0.0, now - oldest[0][1]), 3) if oldest else 0.0


def last_finished_reconciliation(client: redis.Redis) -> dict[str, Any] | None:
    """The newest report of a reconciliation that finished (not failed, not a dry run)."""
    for raw in cast(list[bytes], client.lrange(keys.RECONCILE_REPORTS, 0, -1)):
        try:
            report = cast(dict[str, Any], json.loads(raw))
        except ValueError:
            continue
        if report.get("status") == "finished":
            return report
    return None


def gather_status(runtime: Runtime) -> StatusSnapshot:
    """Read every number of the status snapshot from Redis."""
    client = runtime.redis
    depths = runtime.pending.depths()
    workers = live_workers(client, stall_seconds=runtime.settings.dispatcher_stall_seconds)
    replication = client.info("replication")
    return StatusSnapshot(
        mode=sync_mode(runtime.settings.mode_label, workers),
        queues=queue_depths(client),
        pending_users=depths["pending"],
        due_now=depths["due_now"],
        inflight=depths["inflight"],
        retrying_users=retrying_users(client),
        dead_letters=runtime.dlq.counts_by_reason(),
        workers=workers,
        paused=runtime.flow.paused(),
        cooldown_seconds=round(runtime.flow.cooldown_remaining(), 3),
        last_reconciliation=last_reconciliation(client),
        breaker=runtime.breaker.snapshot(),
        oldest_due_seconds=oldest_due_seconds(client, time.time()),
        replicas_online=replicas_online(replication),
        min_replicas=runtime.settings.min_replicas,
        redis_refusal=write_refusal(client, replication),
    )
