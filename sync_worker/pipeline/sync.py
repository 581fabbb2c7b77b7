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

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

import httpx
from tenacity import RetryCallState

from sync_worker.deadletters.dlq import Reason, creation_record, failure_record, new_dead_letter_id
from sync_worker.intake.events import SYNCED_FIELDS
from sync_worker.logging import get_logger
from sync_worker.pipeline.breaker import Breaker, BreakerOpen, BreakerView
from sync_worker.pipeline.flow import FlowControl, Throttled
from sync_worker.pipeline.ledger import Ledger
from sync_worker.pipeline.pending import PendingStore
from sync_worker.pipeline.records import Claim, Snapshot
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
    ValidationFailed,
    is_transient,
    may_have_applied,
)
from sync_worker.recur.models import Customer, CustomerPatch
from sync_worker.recur.retry import (
    RetryAfterTooLong,
    call_with_quick_retries,
    handback_delay,
    retry_after_of,
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
    BadRequest: "rejected",
    ValidationFailed: "rejected",
}
EVENT_IDS_LOGGED = 10
DEFAULT_COOL_DOWN_SECONDS = 1.0
HOLD_JITTER_SECONDS = 1.0
"""Spread of the due times of changes held by the breaker, so they do not all come due at once."""
HELD_BY = {"held": "breaker", "paused": "pause", "throttled": "rate_limit", "fenced": "fence"}
"""Outcomes that sent nothing (or stopped sending), traced as `held` with what held them."""
READ_BACK_FIELDS = ("name",)
"""What a read-back compares: the fields we send that Recur returns (metadata it never returns;
`external_id` is what the read looks the customer up by)."""
READ_BACK_RESENDS = 3
"""Re-sends in a row that read-backs may cause before they give up (and leave it to the
reconciliation), so a value Recur stores differently cannot loop forever."""


class LeaseLost(Exception):
    """Our claim on the user lapsed; another worker may own it now, so we must not send."""


@dataclass
class _Lease:
    """A claim and when its lease lapses, as far as this worker renewed it."""

    claim: Claim
    until: float
    lost: bool = False


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


class Syncer:
    """Syncs claimed users, one at a time per calling thread."""

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
        self._ledger = ledger
        self._trace = trace
        self._ops = ops
        self._pending = pending
        self._flow = flow
        self._breaker = breaker
        self._client = client
        self._stats = stats
        self._clock = clock

    def sync_claims(self, claims: list[Claim], *, probe: bool = False) -> list[SyncOutcome]:
        """Sync a batch of claims.

        The batch's Redis work is done in bulk (one round trip to read every snapshot, one to
        settle every success); the PATCHes go one at a time. A paused sync hands every claim
        straight back, and so does a batch from the moment one of its calls gets a 401/403.
        An open circuit breaker does the same (uncounted, until its cool-down ends). `probe`
        marks the breaker's half-open probe, whose answer closes or re-opens it.
        """
        outcomes: list[SyncOutcome] = []
        succeeded: list[tuple[Claim, Snapshot, float]] = []
        paused = self._flow.paused() is not None
        view = None if probe or paused else self._breaker.view()
        held = view if view is not None and view.is_open else None
        unread = paused or held is not None
        read_at = self._clock()  # reading the snapshots renews every claim's lease
        snapshots = [None] * len(claims) if unread else self._pending.snapshot_many(claims)
        answered = 0
        leases = [_Lease(claim, read_at + self._settings.lease_seconds) for claim in claims]
        unsettled: list[_Lease] = []
        rebound: set[str] = set()
        for index, (claim, snapshot) in enumerate(zip(claims, snapshots, strict=True)):
            if paused:
                self._pending.hand_back(
                    claim, delay=self._settings.auth_probe_interval_seconds, error=None
                )
                outcomes.append(SyncOutcome(claim.user_id, "paused"))
                self._trace.add(claim.user_id, "held", by="pause")
                continue
            started = self._clock()
            if held is not None:
                outcomes.append(self._hold(claim, snapshot, held, started))
                continue
            # Claims still waiting in the batch, and sent ones waiting for the batch's settle,
            # keep their leases while other users are sent.
            self._keep_leases(unsettled + leases[index:])
            if claim.user_id in rebound:
                # Read before a rebind of this batch brought the old id's ledger to this user:
                # read again, without the fields that became stale (which renews the lease).
                leases[index].until = self._clock() + self._settings.lease_seconds
                snapshot = self._pending.snapshot(claim)
            outcome = self._deliver(claim, snapshot, started, leases[index], probe=probe)
            if outcome is None:
                done = (claim, cast(Snapshot, snapshot), started)
                answered += bool(snapshot is not None and patch_body(snapshot))
                new_id = rebind_target(claim.user_id, snapshot)
                if new_id is None:
                    unsettled.append(leases[index])
                    succeeded.append(done)
                else:  # settled at once, before anything else of the batch is sent
                    outcomes += self._settle([done])
                    rebound.add(new_id)
                continue
            outcomes.append(outcome)
            answered += _refused(outcome)
            paused = outcome.result == "paused"
            if outcome.result == "held":
                held = self._breaker.view()
        if answered:
            # Recur answered these calls: it is up (a probe's answer closes the breaker).
            self._breaker.record(successes=answered, probe=probe)
        if succeeded:
            self._keep_leases(unsettled)
            outcomes += self._settle(succeeded)
        self._stats.flush()
        return outcomes

    def _deliver(
        self,
        claim: Claim,
        snapshot: Snapshot | None,
        started: float,
        lease: _Lease,
        *,
        probe: bool,
    ) -> SyncOutcome | None:
        """Send one snapshot; None when it succeeded (or had nothing to send): settle it later."""
        if snapshot is None:
            return self._report(SyncOutcome(claim.user_id, "lost"), started)
        if snapshot.fenced_until is not None and snapshot.held_by_fence(started):
            return self._fenced(claim, snapshot, snapshot.fenced_until - started, started)
        if not snapshot.fields:
            if snapshot.verify is not None:
                return self._read_back(claim, snapshot, started)
            return self._report(SyncOutcome(claim.user_id, "empty"), started)
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
            return self._report(SyncOutcome(claim.user_id, "lost"), started, snapshot)
        except BreakerOpen as opened:
            return self._hold(claim, snapshot, opened.view, started, error=opened.error)
        except Throttled as throttled:
            self._pending.hand_back(claim, delay=throttled.wait, error=None)
            return self._report(
                SyncOutcome(claim.user_id, "throttled", next_retry_in=throttled.wait),
                started,
                snapshot,
            )
        except RetryAfterTooLong as too_long:
            return self._failed(
                claim, snapshot, too_long.error, started, wait=too_long.wait, probe=probe
            )
        except (Unauthorized, Forbidden) as error:
            return self._pause(claim, snapshot, error, started)
        except EndpointNotFound as error:
            # Not a verdict on this customer: every call would get it, so stop them all rather
            # than turn each pending change into a `not_found` dead letter.
            return self._pause(
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
                return self._dead(claim, snapshot, body, error, reason, started)
            return self._failed(claim, snapshot, error, started, probe=probe)
        except RecurError as error:
            return self._failed(claim, snapshot, error, started, probe=probe)
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
            outcomes.append(self._report(outcome, started, snapshot))
            if rebound is not None:  # traced after the PATCH that made it
                self._trace.add(claim.user_id, "rebound", to=rebound)
                self._trace.add(rebound, "rebound", **{"from": claim.user_id})
        return outcomes

    def _send(
        self,
        claim: Claim,
        snapshot: Snapshot,
        body: dict[str, Any],
        lease: _Lease,
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
            if self._lost_answer_applied(claim, snapshot, body, refused, failures, run):
                return
            if not (
                isinstance(refused, NotFound)
                and self._bind_by_email(claim, snapshot, body, refused, run)
            ):
                raise

    def _lost_answer_applied(
        self,
        claim: Claim,
        snapshot: Snapshot,
        body: dict[str, Any],
        refused: RecurStatusError,
        failures: list[BaseException],
        run: Callable[[Callable[[], Any]], Any],
    ) -> bool:
        """After a 404/409 that follows a call whose answer was lost (in this claim or the last
        failed round), read Recur: True when it already holds the desired state.

        A rebind that took effect answers the retry against the old id with 404; dead-lettering
        it would be wrong, and would leave our state on the old id.
        """
        last = snapshot.last_error
        earlier = last is not None and (last.get("status") is None or last["status"] >= 500)
        if not (earlier or any(may_have_applied(error) for error in failures)):
            return False
        applied = self._reads_as_applied(claim, body, refused, run)
        log.warning(
            "lost_answer_checked",
            user_id=claim.user_id,
            status=refused.status,
            applied=applied,
            why="a call before this refusal got no answer and may have taken effect",
        )
        if applied:
            self._stats.incr("lost_answers_confirmed_total")
        return applied

    def _reads_as_applied(
        self,
        claim: Claim,
        body: dict[str, Any],
        refused: RecurStatusError,
        run: Callable[[Callable[[], Any]], Any],
    ) -> bool:
        """Does Recur hold `body` for this user? Only fields Recur returns are compared."""

        def read(external_id: str) -> Customer | None:
            try:
                customer: Customer = run(
                    lambda: self._client.get_customer_by_external_id(external_id)
                )
            except NotFound:
                return None
            return customer

        target = body.get("external_id", claim.user_id)
        if target != claim.user_id:
            # A rebind or unbind is done only when nobody holds the old id any more.
            if not isinstance(refused, NotFound) and read(claim.user_id) is not None:
                return False
            if target is None:
                return set(body) == {"external_id"}
        customer = read(target)
        if customer is None or customer.external_id != target:
            return False
        if "name" in body and customer.name != body["name"]:
            return False
        # Metadata is write-only (no answer carries it): compared only when Recur returns it.
        return "metadata" not in body or customer.metadata in (None, body["metadata"])

    def _bind_by_email(
        self,
        claim: Claim,
        snapshot: Snapshot,
        body: dict[str, Any],
        missing: NotFound,
        run: Callable[[Callable[[], Any]], Any],
    ) -> bool:
        """After a 404 by external id: bind the user's customer found by email, if exactly one
        customer has that email and it has no external id. True when it was bound and updated.

        A change of external id is not a bind (the old id is what was missing). The email is
        only looked up with, never sent: Recur does not let it change.
        """
        if not self._settings.bind_by_email or "external_id" in body:
            return False
        email = self._known_email(claim.user_id, snapshot)
        if email is None:
            return False
        matches: list[Customer] = run(lambda: self._client.find_customers_by_email(email))
        if len(matches) != 1:
            log.info("bind_by_email_skipped", user_id=claim.user_id, matches=len(matches))
            self._trace.add(claim.user_id, "bind_by_email_skipped", matches=len(matches))
            return False
        (customer,) = matches
        if customer.external_id is not None and customer.external_id != claim.user_id:
            raise BoundElsewhere(missing, customer_id=customer.id, holder=customer.external_id)
        bind = CustomerPatch.model_construct(**body, external_id=claim.user_id)
        run(lambda: self._client.update_customer(customer.id, bind))
        log.info("bound_by_email", user_id=claim.user_id, customer_id=customer.id)
        self._trace.add(claim.user_id, "bound_by_email", customer_id=customer.id)
        self._stats.incr("bound_by_email_total")
        return True

    def _known_email(self, user_id: str, snapshot: Snapshot) -> str | None:
        """The user's email from its pending change, else from what was last applied."""
        pending = snapshot.fields.get("email")
        if pending is not None and isinstance(pending.value, str):
            return pending.value
        entry = self._ledger.get(user_id)
        applied = entry.fields.get("email") if entry is not None else None
        return applied.value if applied is not None and isinstance(applied.value, str) else None

    def _keep_lease(self, lease: _Lease) -> None:
        """Before an attempt: renew the lease unless more than the longest attempt (the longest
        wait for the rate limit plus the attempt's deadline) is left of it, so that no attempt
        outlasts it; `LeaseLost` if it lapsed meanwhile."""
        self._keep_leases([lease])
        if lease.lost:
            raise LeaseLost(lease.claim.user_id)

    def _keep_leases(self, leases: list[_Lease]) -> None:
        """Renew, in one round trip, each lease with no more than the longest attempt left; a
        lease that could not be renewed is marked lost (another worker may own the user now)."""
        now = self._clock()
        longest = self._settings.retry_fast_max_seconds + self._settings.attempt_deadline_seconds
        due = [lease for lease in leases if not lease.lost and lease.until - now <= longest]
        if not due:
            return
        renewed = self._pending.renew_many([lease.claim for lease in due])
        for lease, kept in zip(due, renewed, strict=True):
            lease.until = now + self._settings.lease_seconds
            lease.lost = not kept

    def _quick_caller(
        self,
        lease: _Lease,
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
            self._count_failure(error)
            self._trace.add(
                lease.claim.user_id,
                "attempt",
                result="quick_retry",
                worker=worker_name(),
                **(_error_info(error) if error is not None else {}),
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

    def _fenced(self, claim: Claim, snapshot: Snapshot, wait: float, started: float) -> SyncOutcome:
        """Hand a claim back unsent and uncounted until an ambiguous PATCH can no longer land."""
        self._pending.hand_back(claim, delay=wait, error=None)
        self._stats.incr("sync_retries_total", kind="fenced")
        outcome = SyncOutcome(claim.user_id, "fenced", next_retry_in=wait)
        return self._report(outcome, started, snapshot)

    def _read_back(self, claim: Claim, snapshot: Snapshot, started: float) -> SyncOutcome:
        """After an ambiguous outcome and the sends that followed it: does Recur hold what the
        ledger says was applied? Where it does not, a late PATCH landed: queue the value again."""
        try:
            customer = self._client.get_customer_by_external_id(claim.user_id)
        except NotFound:
            # Moved away (a late rebind?) or deleted: nothing to compare; reconciliation reports it.
            log.warning("read_back_not_found", user_id=claim.user_id)
            self._stats.incr("read_backs_total", outcome="not_found")
            customer = None
        except RecurError as error:
            delay = self._settings.fence_verify_delay_seconds
            self._pending.hand_back(claim, delay=delay, error=None)
            self._stats.incr("read_backs_total", outcome="retry")
            outcome = SyncOutcome(claim.user_id, "read_back_retry", next_retry_in=delay)
            return self._report(outcome, started, snapshot, error=error)
        observed: dict[str, Any] = {}
        if customer is not None:
            returned = customer.model_fields_set
            observed = {
                name: getattr(customer, name) for name in READ_BACK_FIELDS if name in returned
            }
        verified = self._pending.verified(claim, observed, max_resends=READ_BACK_RESENDS)
        if verified is None:
            return self._report(SyncOutcome(claim.user_id, "lost"), started, snapshot)
        if verified.differ:
            log.warning(
                "read_back_mismatch",
                user_id=claim.user_id,
                fields=verified.differ,
                resent=verified.resent,
                hint="a PATCH that ended ambiguously landed late; the ledger's value is re-sent"
                if verified.resent
                else "gave up re-sending; the nightly reconciliation will report it",
            )
        result = "read_back_resend" if verified.resent else "read_back_ok"
        if customer is not None:
            gave_up = verified.differ and not verified.resent
            counted = "gave_up" if gave_up else result.removeprefix("read_back_")
            self._stats.incr("read_backs_total", outcome=counted)
        return self._report(SyncOutcome(claim.user_id, result, status=200), started, snapshot)

    def _count_failure(self, error: BaseException | None) -> None:
        if isinstance(error, RecurStatusError):
            status_class = "429" if error.status == 429 else f"{error.status // 100}xx"
            self._stats.incr("patches_total", status_class=status_class)
        else:
            self._stats.incr("patches_total", status_class="error")

    def _failed(
        self,
        claim: Claim,
        snapshot: Snapshot,
        error: BaseException,
        started: float,
        *,
        wait: float | None = None,
        probe: bool = False,
    ) -> SyncOutcome:
        self._count_failure(error)
        asked = wait if wait is not None else retry_after_of(error)
        if isinstance(error, RateLimited):
            self._flow.cool_down(asked or DEFAULT_COOL_DOWN_SECONDS)
            if probe:  # Recur answered: it is up, and the cool-down holds everybody
                self._breaker.record(successes=1, probe=True)
        else:
            view = self._breaker.record(failures=1, probe=probe)
            if view.is_open:  # the call that tripped it, or one in flight when it opened
                return self._hold(claim, snapshot, view, started, error=error)
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
            return self._dead(
                claim, snapshot, patch_body(snapshot), error, "retries_exhausted", started
            )
        self._pending.hand_back(claim, delay=delay, error=_error_info(error))
        self._stats.incr("sync_retries_total", kind="scheduled")
        return self._report(
            SyncOutcome(
                claim.user_id, "retry", status=status, attempts=attempts, next_retry_in=delay
            ),
            started,
            snapshot,
            error=error,
        )

    def _hold(
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
        return self._report(outcome, started, snapshot, error=error)

    def _pause(
        self,
        claim: Claim,
        snapshot: Snapshot,
        error: RecurStatusError,
        started: float,
        *,
        reason: str = "unauthorized",
        hint: str = "check RECUR_SECRET_KEY; the sync resumes by itself once a call succeeds",
    ) -> SyncOutcome:
        self._count_failure(error)
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
        return self._report(
            SyncOutcome(claim.user_id, "paused", status=error.status), started, snapshot
        )

    def _dead(
        self,
        claim: Claim,
        snapshot: Snapshot,
        body: dict[str, Any],
        error: BaseException,
        reason: Reason,
        started: float,
    ) -> SyncOutcome:
        if reason != "retries_exhausted":
            self._count_failure(error)
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
        return self._report(
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

    def _report(
        self,
        outcome: SyncOutcome,
        started: float,
        snapshot: Snapshot | None = None,
        *,
        error: BaseException | None = None,
        reason: str | None = None,
    ) -> SyncOutcome:
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
            details.update(_error_info(error))
        if outcome.next_retry_in is not None:
            details["retry_at"] = round(self._clock() + outcome.next_retry_in, 3)
        if outcome.dead_letter_id:
            details["dead_letter_id"] = outcome.dead_letter_id
            details["reason"] = logged.get("reason")
        held_by = HELD_BY.get(outcome.result)
        if held_by is not None:
            details["by"] = held_by
        self._trace.add(outcome.user_id, "held" if held_by else "attempt", **details)


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


def _error_info(error: BaseException) -> dict[str, Any]:
    if isinstance(error, RecurStatusError):
        return {"status": error.status, "code": error.code, "message": error.message[:300]}
    return {"status": None, "code": type(error).__name__, "message": str(error)[:300]}
