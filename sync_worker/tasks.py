"""Thin Celery tasks over the sync and the reconciliation: they unpack arguments and call in."""

from __future__ import annotations

from collections import Counter
from typing import Any

from sync_worker.celery_app import SYNC_BATCH_TASK, SyncRequest, app
from sync_worker.pipeline.records import Claim
from sync_worker.reconcile.reconciler import Reconciler


@app.task(name=SYNC_BATCH_TASK, acks_late=True, Request=SyncRequest)
def sync_batch(claims: list[list[str]]) -> dict[str, int]:
    """Sync a batch of claimed users: `[[user_id, token], ...]`. Returns counts by result."""
    runtime = app.runtime
    outcomes = runtime.syncer.sync_claims([Claim(user_id=u, token=t) for u, t in claims])
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
