"""Triage of one dead letter: the queued change beside what was last applied and what Recur holds.

For `not_found` and `conflict` the answer is upstream, so `dlq show` and the admin API fetch the
customer's current record (and, for a conflict on `external_id`, the customer that holds the id
we tried to take). A failing Recur call is reported, never raised: triage must work during the
very outage an operator is looking into.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sync_worker.deadletters.dlq import DeadLetter
from sync_worker.intake.events import SYNCED_FIELDS
from sync_worker.pipeline.flow import Throttled
from sync_worker.pipeline.ledger import Ledger
from sync_worker.recur.client import RecurClient
from sync_worker.recur.errors import NotFound, RecurError

UPSTREAM_REASONS = ("not_found", "conflict")
"""Reasons whose cause is the state of the customer in Recur."""


@dataclass(frozen=True)
class Triage:
    """What an operator needs to decide between replay and delete."""

    entry: DeadLetter
    applied: dict[str, Any]
    applied_at: float | None
    recur: dict[str, Any] | None = None
    recur_error: str | None = None
    holder: dict[str, Any] | None = None
    recur_missing: bool = False
    """Recur answered that it has no such customer (as opposed to not being asked, or failing)."""

    def rows(self) -> list[tuple[str, Any, Any, Any]]:
        """(field, queued change, last applied, Recur now) for every synced field in play."""
        queued = {name: item["value"] for name, item in self.entry.fields.items()}
        names = [n for n in SYNCED_FIELDS if n in queued or n in self.applied]
        return [
            (
                name,
                queued.get(name),
                self.applied.get(name),
                None if self.recur is None else self.recur.get(name),
            )
            for name in names
        ]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "entry": self.entry.to_dict(),
            "applied": self.applied,
            "applied_at": self.applied_at,
            "recur": self.recur,
            "recur_error": self.recur_error,
            "holder": self.holder,
        }


def _missing(external_id: str) -> str:
    return f"Recur has no customer with external_id {external_id!r}"


def _fetch(recur: RecurClient, external_id: str) -> tuple[dict[str, Any] | None, str | None]:
    try:
        customer = recur.get_customer_by_external_id(external_id)
    except NotFound:
        return None, _missing(external_id)
    except (RecurError, Throttled) as error:
        return None, f"could not fetch the customer from Recur: {error}"
    return customer.model_dump(mode="json"), None


def triage(
    entry: DeadLetter,
    *,
    ledger: Ledger,
    recur: RecurClient | None,
    recur_unavailable: str = "",
) -> Triage:
    """Gather the triage of an entry; `recur` None skips the upstream look-up, saying why."""
    applied_entry = ledger.get(entry.user_id)
    applied = {} if applied_entry is None else {n: s.value for n, s in applied_entry.fields.items()}
    applied_at = None if applied_entry is None else applied_entry.applied_at
    if entry.reason not in UPSTREAM_REASONS:
        return Triage(entry=entry, applied=applied, applied_at=applied_at)
    if recur is None:
        return Triage(
            entry=entry, applied=applied, applied_at=applied_at, recur_error=recur_unavailable
        )
    current, error = _fetch(recur, entry.user_id)
    missing = current is None and error == _missing(entry.user_id)
    holder = None
    wanted = entry.request.get("external_id")
    if entry.reason == "conflict" and isinstance(wanted, str) and wanted != entry.user_id:
        holder, _ = _fetch(recur, wanted)
    return Triage(
        entry=entry,
        applied=applied,
        applied_at=applied_at,
        recur=current,
        recur_error=error,
        holder=holder,
        recur_missing=missing,
    )
