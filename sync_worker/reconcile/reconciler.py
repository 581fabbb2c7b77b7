"""The nightly reconciliation: page through every Recur customer and repair drift.

One pass, under a lock so that only one runs at a time:

1. resume from the checkpoint a crashed or failed pass left, else start at the first page;
2. for each page of `GET /v1/customers?limit=100&starting_after=...`, compare every customer that
   has an external id with the ledger, inside Redis (page_script.py), which also adds the page's
   external ids to the run's `seen` set. A drifted field is merged back into the pending store,
   by the same script, with the ledger's value and time (`PendingStore.restore`'s Lua), so the
   normal sync path repairs it (debounce, stale guard, retries, dead letters); a newer pending
   update wins that merge by itself. Email is immutable upstream: a mismatch is reported, never
   sent. A field a customer's answer leaves out is unknown, never drift: Recur's documented
   answers carry no metadata, so the report names the fields actually compared. Then the cursor
   and counts go into the checkpoint. The next pages are fetched meanwhile
   (page_stream.py), with retries;
3. ledger users absent from `seen` are missing in Recur (a script scans the ledger's buckets in
   batches, in Redis);
   `not_found` dead letters whose customer is now in `seen` are replayed;
4. the report is stored, the checkpoint and the `seen` set dropped, the lock released.

Python holds a few pages and fixed counts, whatever the number of customers: the seen ids live
in Redis. A dry run sends nothing, enqueues nothing and writes no checkpoint (it counts what it
would do). Nightly (scheduled) runs are keyed by date: a second beat or a redelivered message
on the same day finds the day's marker and does nothing.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from functools import cached_property
from typing import Any, Literal, cast
from zoneinfo import ZoneInfo

import redis

from sync_worker import lua
from sync_worker import redis_keys as keys
from sync_worker.deadletters.dlq import DeadLetterQueue
from sync_worker.logging import get_logger
from sync_worker.pipeline.flow import FlowControl, Throttled
from sync_worker.pipeline.ledger import Ledger
from sync_worker.reconcile.drift import COMPARED_FIELDS, Counts, fields_compared
from sync_worker.reconcile.page_script import PageScript, Record
from sync_worker.reconcile.page_stream import PageStream
from sync_worker.reconcile.run_lock import LockKeeper
from sync_worker.recur.client import RecurClient
from sync_worker.recur.errors import BadRequest, RecurError
from sync_worker.recur.models import RawCustomerPage
from sync_worker.runtime import Runtime
from sync_worker.telemetry.ops_webhooks import OpsEmitter

log = get_logger(__name__)

LOCK_TTL_SECONDS = 60.0
"""The run lock lapses this long after its holder died; a live holder renews it every third."""
PAGE_ATTEMPTS = 8
"""Tries per page before the run stops, failed, with its checkpoint kept."""
SEEN_TTL_SECONDS = 3 * 24 * 3600.0
"""A crashed run's seen set outlives a few nights, until the next run resumes and drops it."""
SCHEDULED_MARK_TTL_SECONDS = 2 * 24 * 3600
SCAN_BATCH = 1000
"""Ledger users looked at per call of the missing-users script (whole buckets)."""

_MISSING = lua.script("pipeline/ledger_fn.lua", "reconcile/reconciler_missing.lua")

Status = Literal["finished", "failed", "dry_run", "already_running", "already_done"]
PageHook = Callable[[dict[str, Any]], None]


@dataclass(frozen=True)
class RunResult:
    """How a trigger ended: its report, or the running run's progress, or the day's marker."""

    status: Status
    report: dict[str, Any]

    @property
    def ok(self) -> bool:
        """True unless the pass failed or could not start because another one runs."""
        return self.status not in ("failed", "already_running")


class _Failed(Exception):
    """The pass stops, failed, with its checkpoint kept."""


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _iso(moment: float) -> str:
    return datetime.fromtimestamp(moment, tz=UTC).isoformat(timespec="milliseconds")


@dataclass
class _Run:
    """The state of one pass: what a checkpoint saves and progress shows."""

    run_id: str
    dry_run: bool
    scheduled: bool
    started: float
    cursor: str | None = None
    counts: Counts = field(default_factory=Counts)
    resumed_at_page: int = 0

    @property
    def seen(self) -> str:
        return keys.reconcile_seen(self.run_id)

    @cached_property
    def started_at(self) -> str:
        return _iso(self.started)

    def progress(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "dry_run": self.dry_run,
            "scheduled": self.scheduled,
            "started_at": self.started_at,
            "cursor": self.cursor,
            **self.counts.numbers(),
        }

    def record(self) -> Record:
        """The checkpoint (none in a dry run) and progress as of now."""
        if self.dry_run:
            return Record(None, self.progress())
        # vars, not asdict: the same JSON without deep-copying the samples on every page.
        counts = json.dumps(vars(self.counts))
        return Record(
            ["run_id", self.run_id, "cursor", self.cursor or "", "counts", counts], self.progress()
        )


class Reconciler:
    """Runs reconciliation passes; collaborators come in as arguments."""

    def __init__(
        self,
        *,
        client: redis.Redis,
        recur: RecurClient,
        dlq: DeadLetterQueue,
        flow: FlowControl,
        ops: OpsEmitter,
        reports_kept: int,
        timezone: str = "UTC",
        page_attempts: int = PAGE_ATTEMPTS,
        lock_ttl_seconds: float = LOCK_TTL_SECONDS,
        clock: Callable[[], float] = time.time,
        bind_by_email: bool = True,
    ) -> None:
        self._redis = client
        self._recur = recur
        self._dlq = dlq
        self._flow = flow
        self._ops = ops
        self._reports_kept = reports_kept
        self._zone = ZoneInfo(timezone)
        self._attempts = page_attempts
        self._lock_ttl = lock_ttl_seconds
        self._clock = clock
        self._missing = client.register_script(_MISSING)
        self._page_script = PageScript(
            client, seen_ttl=int(SEEN_TTL_SECONDS), clock=clock, bind_by_email=bind_by_email
        )

    @classmethod
    def from_runtime(cls, runtime: Runtime, **overrides: Any) -> Reconciler:
        """A reconciler on a process's collaborators (its Recur client is rate limited)."""
        settings = runtime.settings
        options: dict[str, Any] = {
            "reports_kept": settings.reconcile_reports_kept,
            "timezone": settings.reconcile_timezone,
            "bind_by_email": settings.bind_by_email,
            **overrides,
        }
        return cls(
            client=runtime.redis,
            recur=runtime.recur,
            dlq=runtime.dlq,
            flow=runtime.flow,
            ops=runtime.ops,
            **options,
        )

    def run(
        self, *, dry_run: bool = False, scheduled: bool = False, on_page: PageHook | None = None
    ) -> RunResult:
        """One pass, unless another runs (`already_running`) or tonight's already finished.

        `on_page(progress)` is called after each page is checkpointed (the CLI's display).
        """
        lock = self._redis.lock(keys.RECONCILE_LOCK, timeout=self._lock_ttl, thread_local=False)
        if not lock.acquire(blocking=False):
            running = progress(self._redis) or {}
            log.info("reconcile_already_running", run_id=running.get("run_id"))
            return RunResult("already_running", running)
        with LockKeeper(lock, ttl=self._lock_ttl) as keeper:
            try:
                # Checked under the lock: a run that finished set the marker before releasing.
                day = datetime.fromtimestamp(self._clock(), tz=self._zone).date().isoformat()
                marker = keys.reconcile_scheduled(day)
                if scheduled and self._redis.exists(marker):
                    log.info("reconcile_skipped", why="tonight's run already finished", day=day)
                    return RunResult("already_done", {"day": day})
                report = self._pass(self._start(dry_run, scheduled), keeper, on_page)
                if scheduled and report["status"] == "finished":
                    self._redis.set(marker, report["run_id"], ex=SCHEDULED_MARK_TTL_SECONDS)
                return RunResult(cast(Status, report["status"]), report)
            finally:
                self._redis.delete(keys.RECONCILE_PROGRESS)

    def _start(self, dry_run: bool, scheduled: bool) -> _Run:
        """Resume the checkpointed pass, or begin a new one (dry runs always begin anew)."""
        started = self._clock()
        saved = {} if dry_run else self._redis.hgetall(keys.RECONCILE_CHECKPOINT)
        checkpoint = {_text(k): _text(v) for k, v in saved.items()}
        if "run_id" not in checkpoint:
            run_id = f"rc_{int(started)}_{secrets.token_hex(4)}"
            return _Run(run_id, dry_run, scheduled, started)
        counts = Counts.from_json(checkpoint["counts"])
        return _Run(
            checkpoint["run_id"],
            dry_run,
            scheduled,
            started,
            cursor=checkpoint["cursor"] or None,
            counts=counts,
            resumed_at_page=counts.pages,
        )

    def _pass(self, run: _Run, keeper: LockKeeper, hook: PageHook | None) -> dict[str, Any]:
        counts = run.counts
        log.info("reconcile_started", **run.progress())
        self._page_script.save(run.record(), seen=run.seen)
        error: str | None = None
        pages = self._pages(run.cursor)
        # The last page compared, whose checkpoint goes with the next page's script (one round
        # trip per page), or is saved alone when the pass stops.
        unsaved: Record | None = None
        try:
            while True:
                if keeper.lost.is_set():
                    raise _Failed("the run lock was lost (Redis unreachable for too long?)")
                page, retried = pages.next()
                counts.errors += retried
                resuming = run.cursor is not None and counts.pages == run.resumed_at_page
                if isinstance(page, BadRequest) and resuming:
                    # Recur no longer knows the checkpoint's cursor: start over, from nothing.
                    log.warning("reconcile_checkpoint_invalid", cursor=run.cursor, error=str(page))
                    self._redis.unlink(run.seen)
                    counts = run.counts = Counts()
                    run.cursor, run.resumed_at_page = None, 0
                    pages.close()
                    pages = self._pages(None)
                    continue
                if not isinstance(page, RawCustomerPage):
                    raise page
                # The script adds this page's ids to `seen` before its checkpoint is saved: a
                # crash in between re-reads the page on resume, which adds the same ids again.
                self._page_script.compare(
                    page.body, counts, seen=run.seen, record=unsaved, repair=not run.dry_run
                )
                if unsaved is not None and hook is not None:
                    hook(unsaved.progress)
                counts.pages += 1
                run.cursor = page.next
                unsaved = run.record()
                if page.next is None:
                    break
            self._flush(run, unsaved, hook)
            unsaved = None
            self._count_missing(run.seen, counts)
            self._replay_found(run.seen, counts, dry_run=run.dry_run)
        except (RecurError, Throttled, _Failed) as failure:
            error = str(failure)
            self._flush(run, unsaved, hook)
        finally:
            pages.close()
        return self._finish(run, error)

    def _pages(self, cursor: str | None) -> PageStream:
        return PageStream(self._recur, flow=self._flow, cursor=cursor, attempts=self._attempts)

    def _finish(self, run: _Run, error: str | None) -> dict[str, Any]:
        """Store the report; a pass that did not fail drops its checkpoint and seen set."""
        status = "failed" if error else ("dry_run" if run.dry_run else "finished")
        finished = self._clock()
        report = {
            "run_id": run.run_id,
            "status": status,
            "dry_run": run.dry_run,
            "scheduled": run.scheduled,
            "resumed": run.resumed_at_page > 0,
            "resumed_at_page": run.resumed_at_page,
            "started_at": _iso(run.started),
            "finished_at": _iso(finished),
            "duration_seconds": round(finished - run.started, 3),
            **asdict(run.counts),
            # Only what Recur's answers carry can be compared (the documented ones never carry
            # metadata); the report says so rather than letting "in sync" imply more.
            "fields_compared": (compared := fields_compared(run.counts)),
            "fields_not_compared": [f for f in COMPARED_FIELDS if f not in compared],
            "error": error,
        }
        pipe = self._redis.pipeline(transaction=True)
        pipe.lpush(keys.RECONCILE_REPORTS, json.dumps(report, ensure_ascii=False))
        pipe.ltrim(keys.RECONCILE_REPORTS, 0, self._reports_kept - 1)
        if not error:
            # UNLINK: a million ids are freed by Redis's background thread, not while it waits.
            pipe.unlink(run.seen)
            if not run.dry_run:
                pipe.delete(keys.RECONCILE_CHECKPOINT)
        pipe.execute()
        outcome = {k: v for k, v in report.items() if k != "samples"}
        (log.error if error else log.info)("reconcile_" + status, **outcome)
        self._ops.emit("reconciliation.finished", outcome)
        return report

    def _flush(self, run: _Run, unsaved: Record | None, hook: PageHook | None) -> None:
        """Save the last page's checkpoint, which no next page carried."""
        if unsaved is None:
            return
        self._page_script.save(unsaved, seen=run.seen)
        if hook is not None:
            hook(unsaved.progress)

    def _count_missing(self, seen: str, counts: Counts) -> None:
        """Ledger users Recur did not list, found by Redis about SCAN_BATCH users at a time."""
        # The script walks the buckets only: entries of the layout before them move there first.
        Ledger(self._redis).migrate()
        bucket = 0
        while True:
            reply = cast(list[Any], self._missing(keys=[seen], args=[bucket, SCAN_BATCH]))
            bucket = int(reply[0])
            missing = [_text(item) for item in reply[1:]]
            counts.missing_in_recur += len(missing)
            for user_id in missing:
                counts.sample("missing_in_recur", user_id)
            if bucket == 0:
                return

    def _replay_found(self, seen: str, counts: Counts, *, dry_run: bool) -> None:
        """Replay `not_found` dead letters whose customer the pass has now seen."""
        for entry in self._dlq.iter_entries():
            if entry.reason != "not_found" or not self._redis.sismember(seen, entry.user_id):
                continue
            outcome = self._dlq.replay(entry.id, dry_run=dry_run).outcome
            if outcome in ("replayed", "would_replay"):
                counts.dead_letters_replayed += 1
                counts.sample("dead_letters_replayed", entry.user_id)


def progress(client: redis.Redis) -> dict[str, Any] | None:
    """The running pass's progress, or None when none runs."""
    raw = client.get(keys.RECONCILE_PROGRESS)
    return cast(dict[str, Any], json.loads(cast(bytes, raw))) if raw is not None else None


def reports(client: redis.Redis, *, limit: int = 10) -> list[dict[str, Any]]:
    """The last stored reports, newest first."""
    raw = cast(list[bytes], client.lrange(keys.RECONCILE_REPORTS, 0, limit - 1))
    return [cast(dict[str, Any], json.loads(item)) for item in raw]
