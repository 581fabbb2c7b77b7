"""What the sync learns by reading Recur: whether a refused call's lost answer was applied, the
customer to bind by email (and the bind), and the read-back after an ambiguous outcome.

The Syncer (sync.py) asks; the first two run their calls through its quick retries (`run`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sync_worker.logging import get_logger
from sync_worker.pipeline.ledger import Ledger
from sync_worker.pipeline.outcomes import Outcomes, SyncOutcome
from sync_worker.pipeline.pending import PendingStore
from sync_worker.pipeline.records import Claim, Snapshot
from sync_worker.recur.client import RecurClient
from sync_worker.recur.errors import (
    BoundElsewhere,
    NotFound,
    RecurError,
    RecurStatusError,
    UnboundUser,
    may_have_applied,
)
from sync_worker.recur.models import Customer, CustomerPatch
from sync_worker.settings import Settings
from sync_worker.telemetry.stats import Stats
from sync_worker.telemetry.trace import TraceLog

log = get_logger(__name__)

READ_BACK_FIELDS = ("name",)
"""What a read-back compares: the fields we send that Recur returns (metadata it never returns;
`external_id` is what the read looks the customer up by)."""
READ_BACK_RESENDS = 3
"""Re-sends in a row that read-backs may cause before they give up (and leave it to the
reconciliation), so a value Recur stores differently cannot loop forever."""


class ReadBack:
    """Reads Recur for the Syncer when an answer was lost, missing, or may have been overwritten."""

    def __init__(
        self,
        *,
        settings: Settings,
        pending: PendingStore,
        client: RecurClient,
        stats: Stats,
        ledger: Ledger,
        trace: TraceLog,
        outcomes: Outcomes,
    ) -> None:
        self._settings = settings
        self._pending = pending
        self._client = client
        self._stats = stats
        self._ledger = ledger
        self._trace = trace
        self._outcomes = outcomes

    def lost_answer_applied(
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

    def bind_by_email(
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
        unbound_at = self._ledger.unbound_at(claim.user_id)
        if unbound_at is not None and not snapshot.replay_of:
            # The merchant detached this user from its customer: binding it again by email would
            # undo that. Replaying the dead letter is the operator's decision to.
            self._trace.add(claim.user_id, "bind_by_email_skipped", unbound_at_ms=unbound_at)
            raise UnboundUser(missing, unbound_at_ms=unbound_at)
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
        if unbound_at is not None:
            self._ledger.forget_unbind(claim.user_id)
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

    def read_back(self, claim: Claim, snapshot: Snapshot, started: float) -> SyncOutcome:
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
            return self._outcomes.report(outcome, started, snapshot, error=error)
        observed: dict[str, Any] = {}
        if customer is not None:
            returned = customer.model_fields_set
            observed = {
                name: getattr(customer, name) for name in READ_BACK_FIELDS if name in returned
            }
        verified = self._pending.verified(claim, observed, max_resends=READ_BACK_RESENDS)
        if verified is None:
            return self._outcomes.report(SyncOutcome(claim.user_id, "lost"), started, snapshot)
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
        return self._outcomes.report(
            SyncOutcome(claim.user_id, result, status=200), started, snapshot
        )
