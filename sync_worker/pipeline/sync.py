"""One user's sync: read the claimed pending change, PATCH Recur, settle the outcome.

No Celery here: the task layer hands in claims, this decides what each outcome means.

    2xx              -> ledger updated, pending settled ('applied', or 'more' if newer waits)
    429/5xx/timeout  -> a few quick retries, then back to the pending store on a backoff;
                        past the retry budget -> dead letter `retries_exhausted`
    401/403          -> the sync pauses for everybody; the change waits, nothing is consumed
    404 not Recur's  -> (a wrong RECUR_API_URL or a proxy) retried, then paused the same way
    breaker open     -> handed back unsent and uncounted until the cool-down ends (breaker.py)
    404              -> bind by email (BIND_BY_EMAIL): the one customer with the user's email and
                        no external id gets it, in one PATCH by Recur id; one bound to another
                        external id -> `conflict`; else dead letter `not_found`
    409 -> `conflict`; 400/422 -> `rejected`
    404/409 after a call whose answer was lost (timeout, reset, 5xx) -> first a read of Recur:
                        when it shows the desired state, the change is recorded as applied

Recur has no conditional update, so a PATCH whose outcome is ambiguous (a timeout, a reset, a
5xx that may come from a proxy) may still land after a newer one. Such an outcome fences the
user: nothing that would change a field it carried is sent until the old request can no longer
land (`FENCE_HOLD_SECONDS`), and once the change is through, Recur is read back and re-sent where
it disagrees with the ledger on a field it returns (name). Metadata is never returned, so for
it only the hold protects.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable
from typing import Any, cast

import httpx
from tenacity import RetryCallState

from sync_worker.deadletters.dlq import Reason
from sync_worker.logging import get_logger
from sync_worker.pipeline.batch import Batch, Lease
from sync_worker.pipeline.breaker import Breaker, BreakerOpen
from sync_worker.pipeline.flow import FlowControl, Throttled
from sync_worker.pipeline.ledger import Ledger
from sync_worker.pipeline.outcomes import (
    DEFAULT_COOL_DOWN_SECONDS,
    Outcomes,
    SyncOutcome,
    error_info,
    patch_body,
)
from sync_worker.pipeline.pending import PendingStore
from sync_worker.pipeline.read_back import ReadBack
from sync_worker.pipeline.records import Claim, Snapshot
from sync_worker.pipeline.senders import Senders
from sync_worker.recur.client import RecurClient
from sync_worker.recur.errors import (
    BadRequest,
    BoundElsewhere,
    Conflict,
    EndpointNotFound,
    Forbidden,
    NotFound,
    RateLimited,
    RecurError,
    RecurStatusError,
    Unauthorized,
    UnboundUser,
    ValidationFailed,
    is_transient,
    may_have_applied,
)
from sync_worker.recur.models import CustomerPatch
from sync_worker.recur.retry import (
    RetryAfterTooLong,
    call_with_quick_retries,
)
from sync_worker.settings import Settings
from sync_worker.telemetry.ops_webhooks import OpsEmitter
from sync_worker.telemetry.stats import Stats
from sync_worker.telemetry.trace import TraceLog, worker_name

log = get_logger(__name__)

DEAD_REASONS: dict[type[RecurStatusError], Reason] = {
    NotFound: "not_found",
    Conflict: "conflict",
    BoundElsewhere: "conflict",
    UnboundUser: "not_found",
    BadRequest: "rejected",
    ValidationFailed: "rejected",
}


class LeaseLost(Exception):
    """Our claim on the user lapsed; another worker may own it now, so we must not send."""


class Syncer:
    """Syncs batches of claimed users; safe to call from many threads at once."""

    def __init__(
        self,
        *,
        settings: Settings,
        pending: PendingStore,
        flow: FlowControl,
        breaker: Breaker,
        client: RecurClient,
        stats: Stats,
        ops: OpsEmitter,
        ledger: Ledger,
        trace: TraceLog,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._settings = settings
        self._trace = trace
        self._pending = pending
        self._flow = flow
        self._breaker = breaker
        self._client = client
        self._stats = stats
        self._clock = clock
        self._senders = Senders(settings.worker_concurrency)
        self._outcomes = Outcomes(
            settings=settings,
            pending=pending,
            flow=flow,
            breaker=breaker,
            stats=stats,
            ops=ops,
            trace=trace,
            clock=clock,
        )
        self._reads = ReadBack(
            settings=settings,
            pending=pending,
            client=client,
            stats=stats,
            ledger=ledger,
            trace=trace,
            outcomes=self._outcomes,
        )

    def sync_claims(self, claims: list[Claim], *, probe: bool = False) -> list[SyncOutcome]:
        """Sync a batch of claims.

        The batch's Redis work is done in bulk (one round trip to read every snapshot, one to
        settle every success). The PATCHes go out together, up to WORKER_CONCURRENCY at once
        over the worker's senders, so a user does not wait for the users ahead of it in its
        batch; they go one at a time for the breaker's probe and for a batch that rebinds a
        customer (a later user's snapshot may depend on the rebind). A paused sync hands every
        claim straight back, and so does a batch from the moment one of its calls gets a
        401/403 (calls already sent finish). An open circuit breaker does the same (uncounted,
        until its cool-down ends). `probe` marks the breaker's half-open probe, whose answer
        closes or re-opens it.
        """
        paused = self._flow.paused() is not None
        view = None if probe or paused else self._breaker.view()
        held = view if view is not None and view.is_open else None
        read_at = self._clock()  # reading the snapshots renews every claim's lease
        unread = paused or held is not None
        snapshots: list[Snapshot | None] = (
            [None] * len(claims) if unread else self._pending.snapshot_many(claims)
        )
        until = read_at + self._settings.lease_seconds
        batch = Batch(claims, snapshots, [Lease(c, until) for c in claims], paused, held)
        # Until `check_at` no lease is due for renewal: the list is not even built (a scan per
        # user cost 4 % of the worker's CPU).
        check_at = until - self._longest_attempt()
        one_at_a_time = (
            probe
            or unread
            or len(claims) < 2
            or self._settings.worker_concurrency < 2
            or any(rebind_target(c.user_id, s) for c, s in zip(claims, snapshots, strict=True))
        )
        if one_at_a_time:
            self._deliver_in_turn(batch, check_at, probe=probe)
        else:
            self._deliver_together(batch, check_at)
        if batch.answered:
            # Recur answered these calls: it is up (a probe's answer closes the breaker).
            self._breaker.record(successes=batch.answered, probe=probe)
        outcomes = [outcome for outcome in batch.results if outcome is not None]
        succeeded = [done for done in batch.succeeded if done is not None]
        if succeeded:
            self._keep_leases(batch.unsettled)
            outcomes += self._settle(succeeded)
        self._stats.flush()
        return outcomes

    def _deliver_in_turn(self, batch: Batch, check_at: float, *, probe: bool) -> None:
        """Each claim in order, in this thread. Claims still waiting, and sent ones waiting
        for the batch's settle, keep their leases while other users are sent."""
        for index in range(len(batch.claims)):
            if self._clock() >= check_at:
                check_at = self._keep_leases(batch.unsettled + batch.leases[index:])
            self._step(batch, index, probe=probe)

    def _deliver_together(self, batch: Batch, check_at: float) -> None:
        """Every claim on the worker's senders at once (senders.py); the claims still queued
        or sending, and the sent ones waiting for the settle, keep their leases meanwhile."""

        def keep(unfinished: list[int]) -> float:
            with batch.lock:
                unsettled = list(batch.unsettled)
            return self._keep_leases(unsettled + [batch.leases[i] for i in unfinished])

        steps = [
            functools.partial(self._step, batch, index, probe=False)
            for index in range(len(batch.claims))
        ]
        self._senders.run_all(steps, check_at=check_at, clock=self._clock, keep=keep)

    def close(self) -> None:
        """Let the senders' threads end once their calls are done."""
        self._senders.close()

    def _step(self, batch: Batch, index: int, *, probe: bool) -> None:
        """One claim of `batch`: hand it back, hold it, or send it, and record the result."""
        claim, snapshot, lease = batch.claims[index], batch.snapshots[index], batch.leases[index]
        if batch.paused:
            self._pending.hand_back(
                claim, delay=self._settings.auth_probe_interval_seconds, error=None
            )
            batch.results[index] = SyncOutcome(claim.user_id, "paused")
            self._trace.add(claim.user_id, "held", by="pause")
            return
        started = self._clock()
        if batch.held is not None:
            batch.results[index] = self._outcomes.hold(claim, snapshot, batch.held, started)
            return
        if claim.user_id in batch.rebound:
            # Read before a rebind of this batch brought the old id's ledger to this user:
            # read again, without the fields that became stale (which renews the lease).
            lease.until = self._clock() + self._settings.lease_seconds
            snapshot = self._pending.snapshot(claim)
        outcome = self._deliver(claim, snapshot, started, lease, probe=probe)
        if outcome is None:
            done = (claim, cast(Snapshot, snapshot), started)
            new_id = rebind_target(claim.user_id, snapshot)
            with batch.lock:
                batch.answered += bool(snapshot is not None and patch_body(snapshot))
                if new_id is None:
                    batch.unsettled.append(lease)
                    batch.succeeded[index] = done
            if new_id is not None:  # settled at once, before anything else of the batch is sent
                batch.results[index] = self._settle([done])[0]
                batch.rebound.add(new_id)
            return
        batch.results[index] = outcome
        with batch.lock:
            batch.answered += _refused(outcome)
        if outcome.result == "paused":
            batch.paused = True
        elif outcome.result == "held":
            batch.held = self._breaker.view()

    def _deliver(
        self,
        claim: Claim,
        snapshot: Snapshot | None,
        started: float,
        lease: Lease,
        *,
        probe: bool,
    ) -> SyncOutcome | None:
        """Send one snapshot; None when it succeeded (or had nothing to send): settle it later."""
        if snapshot is None:
            return self._outcomes.report(SyncOutcome(claim.user_id, "lost"), started)
        if snapshot.fenced_until is not None and snapshot.held_by_fence(started):
            return self._outcomes.fenced(claim, snapshot, snapshot.fenced_until - started, started)
        if not snapshot.fields:
            if snapshot.verify is not None:
                return self._reads.read_back(claim, snapshot, started)
            return self._outcomes.report(SyncOutcome(claim.user_id, "empty"), started)
        body = patch_body(snapshot)
        if not body:
            return None
        try:
            self._send(
                claim,
                snapshot,
                body,
                lease,
                attempts=1 if probe else self._settings.retry_fast_attempts,
            )
        except LeaseLost:
            return self._outcomes.report(SyncOutcome(claim.user_id, "lost"), started, snapshot)
        except BreakerOpen as opened:
            return self._outcomes.hold(claim, snapshot, opened.view, started, error=opened.error)
        except Throttled as throttled:
            self._pending.hand_back(claim, delay=throttled.wait, error=None)
            return self._outcomes.report(
                SyncOutcome(claim.user_id, "throttled", next_retry_in=throttled.wait),
                started,
                snapshot,
            )
        except RetryAfterTooLong as too_long:
            return self._outcomes.failed(
                claim, snapshot, too_long.error, started, wait=too_long.wait, probe=probe
            )
        except (Unauthorized, Forbidden) as error:
            return self._outcomes.pause(claim, snapshot, error, started)
        except EndpointNotFound as error:
            # Not a verdict on this customer: every call would get it, so stop them all rather
            # than turn each pending change into a `not_found` dead letter.
            return self._outcomes.pause(
                claim,
                snapshot,
                error,
                started,
                reason="endpoint_not_found",
                hint="check RECUR_API_URL: a 404 without Recur's error body means the request "
                "did not reach the Customers API; the sync resumes by itself once a call succeeds",
            )
        except RecurStatusError as error:
            reason = DEAD_REASONS.get(type(error))
            if reason is None and 400 <= error.status < 500 and not is_transient(error):
                reason = "rejected"
            if reason is not None:
                return self._outcomes.dead(claim, snapshot, body, error, reason, started)
            return self._outcomes.failed(claim, snapshot, error, started, probe=probe)
        except RecurError as error:
            return self._outcomes.failed(claim, snapshot, error, started, probe=probe)
        self._stats.incr("patches_total", status_class="2xx")
        return None

    def _settle(self, succeeded: list[tuple[Claim, Snapshot, float]]) -> list[SyncOutcome]:
        states = self._pending.mark_applied_many([(c, s) for c, s, _ in succeeded])
        outcomes = []
        now = self._clock()
        for (claim, snapshot, started), state in zip(succeeded, states, strict=True):
            body = patch_body(snapshot)
            rebound = rebind_target(claim.user_id, snapshot)
            if rebound is not None:
                # mark_applied moved the ledger and what was pending in the same step
                log.info("customer_rebound", user_id=claim.user_id, new_user_id=rebound)
            if body:
                self._stats.incr("syncs_applied_total")
                self._stats.observe("sync_latency_seconds", now - snapshot.first_seen)
                result = "more" if state == "more" else "applied"
                outcome = SyncOutcome(claim.user_id, result, status=200)
            else:
                outcome = SyncOutcome(claim.user_id, "recorded")
            outcomes.append(self._outcomes.report(outcome, started, snapshot))
            if rebound is not None:  # traced after the PATCH that made it
                self._trace.add(claim.user_id, "rebound", to=rebound)
                self._trace.add(rebound, "rebound", **{"from": claim.user_id})
        return outcomes

    def _send(
        self,
        claim: Claim,
        snapshot: Snapshot,
        body: dict[str, Any],
        lease: Lease,
        *,
        attempts: int,
    ) -> None:
        patch = CustomerPatch.model_construct(**body)
        if "external_id" in body and body["external_id"] is None:
            patch = CustomerPatch.model_construct(unbind_external_id=True, **body)
        failures: list[BaseException] = []
        run = self._quick_caller(lease, snapshot, attempts=attempts, failures=failures)
        try:
            run(lambda: self._client.update_customer_by_external_id(claim.user_id, patch))
        except (NotFound, Conflict) as refused:
            if self._reads.lost_answer_applied(claim, snapshot, body, refused, failures, run):
                return
            if not (
                isinstance(refused, NotFound)
                and self._reads.bind_by_email(claim, snapshot, body, refused, run)
            ):
                raise

    def _keep_lease(self, lease: Lease) -> None:
        """Before an attempt: renew the lease unless more than the longest attempt (the longest
        wait for the rate limit plus the attempt's deadline) is left of it, so that no attempt
        outlasts it; `LeaseLost` if it lapsed meanwhile."""
        self._keep_leases([lease])
        if lease.lost:
            raise LeaseLost(lease.claim.user_id)

    def _longest_attempt(self) -> float:
        """The longest an attempt may take: the longest wait for the rate limit plus the
        attempt's deadline."""
        return self._settings.retry_fast_max_seconds + self._settings.attempt_deadline_seconds

    def _keep_leases(self, leases: list[Lease]) -> float:
        """Renew, in one round trip, each lease with no more than the longest attempt left; a
        lease that could not be renewed is marked lost (another worker may own the user now).
        Returns when the next of these leases will be due (renewals elsewhere only delay it)."""
        now = self._clock()
        longest = self._longest_attempt()
        due = [lease for lease in leases if not lease.lost and lease.until - now <= longest]
        if due:
            renewed = self._pending.renew_many([lease.claim for lease in due])
            for lease, kept in zip(due, renewed, strict=True):
                lease.until = now + self._settings.lease_seconds
                lease.lost = not kept
        live = [lease.until for lease in leases if not lease.lost]
        return min(live, default=math.inf) - longest

    def _quick_caller(
        self,
        lease: Lease,
        snapshot: Snapshot,
        *,
        attempts: int,
        failures: list[BaseException] | None = None,
    ) -> Callable[[Callable[[], Any]], Any]:
        """`run(fn)`: `fn` under the quick retries, the lease renewed and failures counted (and
        kept in `failures`, to tell later whether a call may have been applied unanswered); an
        ambiguous failure fences `snapshot`'s user."""

        def before_attempt(attempt: int) -> None:
            self._keep_lease(lease)

        def on_retry(state: RetryCallState) -> None:
            error = state.outcome.exception() if state.outcome is not None else None
            if failures is not None and error is not None:
                failures.append(error)
            self._fence_if_ambiguous(snapshot, error)
            self._outcomes.count_failure(error)
            self._trace.add(
                lease.claim.user_id,
                "attempt",
                result="quick_retry",
                worker=worker_name(),
                **(error_info(error) if error is not None else {}),
            )
            self._stats.incr("sync_retries_total", kind="quick")
            if isinstance(error, RateLimited):
                self._flow.cool_down(error.retry_after or DEFAULT_COOL_DOWN_SECONDS)
            elif error is not None:
                view = self._breaker.record(failures=1)
                if view.is_open:  # stop retrying into an outage: hand it back, uncounted
                    raise BreakerOpen(error, view)

        def run(fn: Callable[[], Any]) -> Any:
            try:
                return call_with_quick_retries(
                    fn,
                    attempts=attempts,
                    max_seconds=self._settings.retry_fast_max_seconds,
                    before_attempt=before_attempt,
                    on_retry=on_retry,
                )
            except RetryAfterTooLong as too_long:
                self._fence_if_ambiguous(snapshot, too_long.error)
                raise
            except RecurError as error:
                self._fence_if_ambiguous(snapshot, error)
                raise

        return run

    def _fence_if_ambiguous(self, snapshot: Snapshot, error: BaseException | None) -> None:
        """Fence the user at once, before anything else can send for it (see the docstring).

        Re-sends of the same fields go on (quick retries, the next round of the same change):
        the late request would write the same values."""
        if error is not None and is_ambiguous(error):
            self._pending.fence(snapshot, self._clock() + self._settings.fence_hold)


def _refused(outcome: SyncOutcome) -> bool:
    """Recur answered with a 4xx other than 429: it refused the data, so it is up."""
    return (
        outcome.result in ("dead_letter", "paused")
        and outcome.status is not None
        and outcome.status < 500
        and outcome.status != 429
    )


def rebind_target(user_id: str, snapshot: Snapshot | None) -> str | None:
    """The external id a snapshot moves the user's customer to, if it rebinds it."""
    body = patch_body(snapshot) if snapshot is not None else {}
    new_id = body.get("external_id")
    return new_id if isinstance(new_id, str) and new_id != user_id else None


def is_ambiguous(error: BaseException) -> bool:
    """True when the request may have reached Recur and may still be applied later: what
    `may_have_applied` says (no answer, or any 5xx, which a proxy can send after forwarding),
    less the transport errors of a request that never left (refused or unopened connection)."""
    if not may_have_applied(error):
        return False
    return not isinstance(
        error.__cause__, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout
    )
