"""How a claim that was not applied ends: retried, held, paused or dead-lettered, and reported.

The Syncer (sync.py) decides which; `Outcomes` does it: hands the claim back or moves it to the
dead letters, counts it, logs the `sync_outcome` line and adds the user's trace entry.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sync_worker.deadletters.dlq import Reason, creation_record, failure_record, new_dead_letter_id
from sync_worker.intake.events import SYNCED_FIELDS
from sync_worker.logging import get_logger
from sync_worker.pipeline.breaker import Breaker, BreakerView
from sync_worker.pipeline.flow import FlowControl
from sync_worker.pipeline.pending import PendingStore
from sync_worker.pipeline.records import Claim, Snapshot
from sync_worker.recur.errors import RateLimited, RecurStatusError
from sync_worker.recur.retry import handback_delay, retry_after_of
from sync_worker.settings import Settings
from sync_worker.telemetry.ops_webhooks import OpsEmitter
from sync_worker.telemetry.stats import Stats
from sync_worker.telemetry.trace import TraceLog, worker_name

log = get_logger(__name__)

EVENT_IDS_LOGGED = 10
DEFAULT_COOL_DOWN_SECONDS = 1.0
HOLD_JITTER_SECONDS = 1.0
"""Spread of the due times of changes held by the breaker, so they do not all come due at once."""
HELD_BY = {"held": "breaker", "paused": "pause", "throttled": "rate_limit", "fenced": "fence"}
"""Outcomes that sent nothing (or stopped sending), traced as `held` with what held them."""


@dataclass(frozen=True)
class SyncOutcome:
    """How one claim ended, for logs, metrics and tests."""

    user_id: str
    result: str
    status: int | None = None
    attempts: int = 0
    event_ids: list[str] = field(default_factory=list)
    next_retry_in: float | None = None
    dead_letter_id: str = ""


def patch_body(snapshot: Snapshot) -> dict[str, Any]:
    """The PATCH body of a pending change: synced fields only (never `email`)."""
    return {name: state.value for name, state in snapshot.fields.items() if name in SYNCED_FIELDS}


class Outcomes:
    """Ends claims that were not applied, and reports every outcome (log line and trace)."""

    def __init__(
        self,
        *,
        settings: Settings,
        pending: PendingStore,
        flow: FlowControl,
        breaker: Breaker,
        stats: Stats,
        ops: OpsEmitter,
        trace: TraceLog,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._settings = settings
        self._pending = pending
        self._flow = flow
        self._breaker = breaker
        self._stats = stats
        self._ops = ops
        self._trace = trace
        self._clock = clock

    def fenced(self, claim: Claim, snapshot: Snapshot, wait: float, started: float) -> SyncOutcome:
        """Hand a claim back unsent and uncounted until an ambiguous PATCH can no longer land."""
        self._pending.hand_back(claim, delay=wait, error=None)
        self._stats.incr("sync_retries_total", kind="fenced")
        outcome = SyncOutcome(claim.user_id, "fenced", next_retry_in=wait)
        return self.report(outcome, started, snapshot)

    def count_failure(self, error: BaseException | None) -> None:
        """Count a failed PATCH by its status class (`error` when there was no answer)."""
        if isinstance(error, RecurStatusError):
            status_class = "429" if error.status == 429 else f"{error.status // 100}xx"
            self._stats.incr("patches_total", status_class=status_class)
        else:
            self._stats.incr("patches_total", status_class="error")

    def failed(
        self,
        claim: Claim,
        snapshot: Snapshot,
        error: BaseException,
        started: float,
        *,
        wait: float | None = None,
        probe: bool = False,
    ) -> SyncOutcome:
        """A transient failure: hand back on a backoff (`wait` when Recur asked), held when the
        breaker opened, dead-lettered `retries_exhausted` past the retry budget."""
        self.count_failure(error)
        asked = wait if wait is not None else retry_after_of(error)
        if isinstance(error, RateLimited):
            self._flow.cool_down(asked or DEFAULT_COOL_DOWN_SECONDS)
            if probe:  # Recur answered: it is up, and the cool-down holds everybody
                self._breaker.record(successes=1, probe=True)
        else:
            view = self._breaker.record(failures=1, probe=probe)
            if view.is_open:  # the call that tripped it, or one in flight when it opened
                return self.hold(claim, snapshot, view, started, error=error)
        now = self._clock()
        attempts = snapshot.attempts + 1
        delay = handback_delay(
            attempts,
            base=self._settings.retry_backoff_base_seconds,
            cap=self._settings.retry_backoff_max_seconds,
            retry_after=asked,
        )
        since = snapshot.retry_since if snapshot.retry_since is not None else now
        status = error.status if isinstance(error, RecurStatusError) else None
        # The budget counts only time the breaker was closed: an outage it held does not use it.
        overdue = now + delay - since - self._settings.retry_budget_seconds
        if overdue > 0 and self._breaker.open_seconds_since(since) < overdue:
            return self.dead(
                claim, snapshot, patch_body(snapshot), error, "retries_exhausted", started
            )
        self._pending.hand_back(claim, delay=delay, error=error_info(error))
        self._stats.incr("sync_retries_total", kind="scheduled")
        return self.report(
            SyncOutcome(
                claim.user_id, "retry", status=status, attempts=attempts, next_retry_in=delay
            ),
            started,
            snapshot,
            error=error,
        )

    def hold(
        self,
        claim: Claim,
        snapshot: Snapshot | None,
        view: BreakerView,
        started: float,
        *,
        error: BaseException | None = None,
    ) -> SyncOutcome:
        """Hand a claim back unsent and uncounted, due when the breaker's cool-down ends."""
        wait = max(0.0, view.open_until - self._clock())
        delay = wait + random.uniform(0, HOLD_JITTER_SECONDS)  # noqa: S311 - jitter
        self._pending.hand_back(claim, delay=delay, error=None)
        self._stats.incr("sync_retries_total", kind="held")
        status = error.status if isinstance(error, RecurStatusError) else None
        outcome = SyncOutcome(claim.user_id, "held", status=status, next_retry_in=delay)
        return self.report(outcome, started, snapshot, error=error)

    def pause(
        self,
        claim: Claim,
        snapshot: Snapshot,
        error: RecurStatusError,
        started: float,
        *,
        reason: str = "unauthorized",
        hint: str = "check RECUR_SECRET_KEY; the sync resumes by itself once a call succeeds",
    ) -> SyncOutcome:
        """Pause the sync for everybody (bad credentials, wrong endpoint); hand the claim back."""
        self.count_failure(error)
        message = error.message if reason == "unauthorized" else f"{error.message}; {hint}"
        if self._flow.pause(reason=reason, status=error.status, message=message):
            log.error(
                "sync_paused",
                reason=reason,
                status=error.status,
                error_code=error.code,
                path=error.path,
                hint=hint,
            )
            self._stats.incr("sync_paused_total")
        self._pending.hand_back(claim, delay=self._settings.auth_probe_interval_seconds, error=None)
        return self.report(
            SyncOutcome(claim.user_id, "paused", status=error.status), started, snapshot
        )

    def dead(
        self,
        claim: Claim,
        snapshot: Snapshot,
        body: dict[str, Any],
        error: BaseException,
        reason: Reason,
        started: float,
    ) -> SyncOutcome:
        """Move the change to the dead letters (a replayed entry is updated in place) and tell
        the operators' webhook."""
        if reason != "retries_exhausted":
            self.count_failure(error)
        now = self._clock()
        status = error.status if isinstance(error, RecurStatusError) else None
        code = error.code if isinstance(error, RecurStatusError) else type(error).__name__
        message = error.message if isinstance(error, RecurStatusError) else str(error)
        entry_id = new_dead_letter_id(now)
        written, _ = self._pending.dead_letter(
            claim,
            snapshot,
            new_id=entry_id,
            common=failure_record(
                reason=reason,
                http_status=status,
                error_code=code,
                error_message=message,
                request=body,
                fields=snapshot.fields,
                event_ids=snapshot.event_ids,
                attempts=snapshot.attempts + 1,
                now=now,
            ),
            created=creation_record(
                entry_id=entry_id,
                user_id=claim.user_id,
                first_failure=snapshot.retry_since or now,
            ),
        )
        self._stats.incr("dead_letters_total", reason=reason)
        # A replayed entry that failed again is updated in place, not written anew.
        dead_letter_id = written or ",".join(snapshot.replay_of)
        self._ops.emit(
            "dead_letter.created",
            {
                "id": dead_letter_id,
                "user_id": claim.user_id,
                "reason": reason,
                "http_status": status,
                "error_code": code,
                "error_message": message[:300],
                "attempts": snapshot.attempts + 1,
                "replayed": not written,
            },
        )
        return self.report(
            SyncOutcome(
                claim.user_id,
                "dead_letter",
                status=status,
                attempts=snapshot.attempts + 1,
                dead_letter_id=dead_letter_id,
            ),
            started,
            snapshot,
            error=error,
            reason=reason,
        )

    def report(
        self,
        outcome: SyncOutcome,
        started: float,
        snapshot: Snapshot | None = None,
        *,
        error: BaseException | None = None,
        reason: str | None = None,
    ) -> SyncOutcome:
        """Log the `sync_outcome` line and trace it (but `lost` and `empty`); the outcome, with
        the snapshot's event ids."""
        event_ids = snapshot.event_ids if snapshot is not None else []
        fields: dict[str, Any] = {
            "user_id": outcome.user_id,
            "result": outcome.result,
            "status": outcome.status,
            "attempts": outcome.attempts,
            "event_ids": event_ids[-EVENT_IDS_LOGGED:],
            "events": len(event_ids),
            "latency_ms": round((self._clock() - started) * 1000, 1),
        }
        if outcome.next_retry_in is not None:
            fields["next_retry_in_s"] = round(outcome.next_retry_in, 2)
        if reason is not None:
            fields["reason"] = reason
            fields["dead_letter_id"] = outcome.dead_letter_id
        if error is not None:
            fields["error"] = str(error)
        level = "info" if error is None else "warning"
        if outcome.result not in ("lost", "empty"):
            getattr(log, level)("sync_outcome", **fields)
            self._trace_outcome(outcome, fields, snapshot, error)
        return SyncOutcome(
            user_id=outcome.user_id,
            result=outcome.result,
            status=outcome.status,
            attempts=outcome.attempts,
            event_ids=event_ids,
            next_retry_in=outcome.next_retry_in,
            dead_letter_id=outcome.dead_letter_id,
        )

    def _trace_outcome(
        self,
        outcome: SyncOutcome,
        logged: dict[str, Any],
        snapshot: Snapshot | None,
        error: BaseException | None,
    ) -> None:
        """The user's trace entry of an outcome: what was sent, by whom, and Recur's answer."""
        details: dict[str, Any] = {
            "result": outcome.result,
            "worker": worker_name(),
            "latency_ms": logged["latency_ms"],
        }
        if snapshot is not None:
            details["fields"] = sorted(patch_body(snapshot))
        if outcome.attempts:
            details["attempts"] = outcome.attempts
        if outcome.status is not None:
            details["status"] = outcome.status
        if error is not None:
            details.update(error_info(error))
        if outcome.next_retry_in is not None:
            details["retry_at"] = round(self._clock() + outcome.next_retry_in, 3)
        if outcome.dead_letter_id:
            details["dead_letter_id"] = outcome.dead_letter_id
            details["reason"] = logged.get("reason")
        held_by = HELD_BY.get(outcome.result)
        if held_by is not None:
            details["by"] = held_by
        self._trace.add(outcome.user_id, "held" if held_by else "attempt", **details)


def error_info(error: BaseException) -> dict[str, Any]:
    """What the trace and the pending hash keep of a failure: status, code, a short message."""
    if isinstance(error, RecurStatusError):
        return {"status": error.status, "code": error.code, "message": error.message[:300]}
    return {"status": None, "code": type(error).__name__, "message": str(error)[:300]}
