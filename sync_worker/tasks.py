"""Thin Celery tasks over the sync and the reconciliation: they unpack arguments and call in."""

from __future__ import annotations

from collections import Counter
from typing import Any

import redis

from sync_worker.celery_app import SYNC_BATCH_TASK, SyncRequest, app
from sync_worker.connections import WRITES_REFUSED
from sync_worker.logging import get_logger
from sync_worker.pipeline.records import Claim
from sync_worker.reconcile.reconciler import Reconciler

log = get_logger(__name__)

# Redis lost, or refusing writes.
REDIS_UNAVAILABLE = (redis.ConnectionError, redis.TimeoutError, *WRITES_REFUSED)


@app.task(name=SYNC_BATCH_TASK, acks_late=True, Request=SyncRequest)
def sync_batch(claims: list[list[str]]) -> dict[str, int]:
    """Sync a batch of claimed users: `[[user_id, token], ...]`. Returns counts by result.

    A batch that Redis fails under (its snapshots unread, or its outcomes unsettled) is left
    as a crash leaves it: its users stay claimed and are offered again once their leases lapse.
    That is said in one line naming them, not in a traceback per task (Celery's "raised
    unexpected"), which is what an operator reads while Redis is down or full.
    """
    runtime = app.runtime
    try:
        outcomes = runtime.syncer.sync_claims([Claim(user_id=u, token=t) for u, t in claims])
    except REDIS_UNAVAILABLE as error:
        log.warning(
            "sync_batch_interrupted",
            users=[user for user, _ in claims],
            error_type=type(error).__name__,
            error=str(error),
            lease_seconds=runtime.settings.lease_seconds,
            next="offered again when their leases lapse",
        )
        return {"interrupted": len(claims)}
    return dict(Counter(outcome.result for outcome in outcomes))


@app.task(name="sync_worker.sweep", Request=SyncRequest)
def sweep() -> dict[str, int]:
    """Offer again lapsed claims and trim old dead letters (beat runs it; workers do too)."""
    return app.runtime.sweep()


@app.task(name="sync_worker.reconcile", Request=SyncRequest)
def reconcile(scheduled: bool = False, dry_run: bool = False) -> dict[str, Any]:
    """One reconciliation pass (beat sends `scheduled=True` nightly); returns its report."""
    result = Reconciler.from_runtime(app.runtime).run(scheduled=scheduled, dry_run=dry_run)
    return {**result.report, "status": result.status}
