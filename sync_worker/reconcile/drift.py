"""Drift: how a page of Recur customers differs from the ledger, as counts (pure logic).

The reconciliation compares each page inside Redis (page_script.py); `compare_page` is the
reference that script is held to by a property test. The counts are what the reconciliation's
checkpoints save and its report shows.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from sync_worker.pipeline.ledger import LedgerEntry
from sync_worker.pipeline.records import FieldState
from sync_worker.recur.models import ListedCustomer
from sync_worker.redis_keys import email_field

COMPARED_FIELDS = ("name", "metadata")
"""Fields a drift is repaired for (`email` cannot be sent, so it is only reported). Each is
compared only where Recur's answer carries it: the documented answers never carry `metadata`,
so its drift cannot be seen through the API (a sandbox run with `--echo-metadata` shows it)."""

SAMPLE_SIZE = 20
"""User ids kept per kind in a report, so an operator can look, without the report growing."""

Drift = dict[str, FieldState]
"""The ledger's state of each drifted field of one user: what to restore."""


@dataclass
class Counts:
    """What a reconciliation pass found so far."""

    pages: int = 0
    scanned: int = 0
    without_external_id: int = 0
    in_sync: int = 0
    drifted: int = 0
    drifted_name: int = 0
    drifted_metadata: int = 0
    compared_name: int = 0
    compared_metadata: int = 0
    bindable_by_email: int = 0
    enqueued: int = 0
    left_to_pending: int = 0
    unknown_to_ledger: int = 0
    missing_in_recur: int = 0
    email_mismatches: int = 0
    dead_letters_replayed: int = 0
    errors: int = 0
    samples: dict[str, list[str]] = field(default_factory=dict)

    def sample(self, kind: str, user_id: str) -> None:
        """Keep `user_id` as an example of `kind`, up to SAMPLE_SIZE of them."""
        kept = self.samples.setdefault(kind, [])
        if len(kept) < SAMPLE_SIZE:
            kept.append(user_id)

    def numbers(self) -> dict[str, int]:
        """The counts without the samples (what progress shows)."""
        return {name: value for name, value in vars(self).items() if name != "samples"}

    @classmethod
    def from_json(cls, text: str) -> Counts:
        """Counts saved by a checkpoint."""
        return cls(**json.loads(text))


def fields_compared(counts: Counts) -> list[str]:
    """The fields Recur returned for at least one customer the ledger knows that field of."""
    return [name for name in COMPARED_FIELDS if getattr(counts, f"compared_{name}")]


def differs(name: str, desired: Any, customer: ListedCustomer) -> bool:
    """True when Recur's value of a field (name or metadata) is not the desired one.

    The field must be in the answer (`compare_page` skips it otherwise): absent is unknown.
    """
    have = customer.get(name)
    if name == "metadata":
        # Recur answers `{}` or null for "no metadata"; both match an empty desired object.
        return (have or {}) != (desired or {})
    return bool(have != desired)


def compare_page(
    customers: list[ListedCustomer], entries: dict[str, LedgerEntry], counts: Counts
) -> dict[str, Drift]:
    """Count a page against the ledger `entries` (by external id); the drifted users' fields."""
    counts.scanned += len(customers)
    drifted: dict[str, Drift] = {}
    for customer in customers:
        user_id = customer.get("external_id")
        if not user_id:
            counts.without_external_id += 1
            continue
        entry = entries.get(user_id)
        if entry is None:
            counts.unknown_to_ledger += 1
            counts.sample("unknown_to_ledger", user_id)
            continue
        email = entry.fields.get("email")
        if email is not None and str(email.value).casefold() != customer["email"].casefold():
            counts.email_mismatches += 1
            counts.sample("email_mismatches", user_id)
        drift: Drift = {}
        for name in COMPARED_FIELDS:
            state = entry.fields.get(name)
            if state is None or name not in customer:
                continue  # nothing desired, or nothing returned to compare it with
            counts.compared_name += name == "name"
            counts.compared_metadata += name == "metadata"
            if differs(name, state.value, customer):
                drift[name] = state
        if not drift:
            counts.in_sync += 1
            continue
        counts.drifted += 1
        counts.drifted_name += "name" in drift
        counts.drifted_metadata += "metadata" in drift
        counts.sample("drifted", user_id)
        drifted[user_id] = drift
    return drifted


BOUND_FIELDS = ("name", "metadata", "email")
"""What a bind by email restores: the fields sent, and the email the sync path looks up with."""


def bindable(
    customers: list[ListedCustomer],
    users_by_email: dict[str, str],
    entries: dict[str, LedgerEntry],
    counts: Counts,
) -> dict[str, Drift]:
    """Customers without an external id whose email the ledger knows: each user's ledger fields,
    to restore so the sync path binds the customer by email on its 404.

    `users_by_email` is the intake and import index (`email_field(email)` -> user id),
    `entries` the ledger entries of those users. A user counts only when its ledger email is
    the customer's exactly (the sync path's lookup by email is exact, as Recur's filter), it was
    not moved to another external id by us, and it has something to send.
    """
    found: dict[str, Drift] = {}
    for customer in customers:
        if customer.get("external_id"):
            continue
        user_id = users_by_email.get(email_field(customer["email"]))
        entry = entries.get(user_id) if user_id is not None else None
        if user_id is None or entry is None:
            continue
        email, moved = entry.fields.get("email"), entry.fields.get("external_id")
        if email is None or email.value != customer["email"]:
            continue
        if moved is not None and moved.value != user_id:
            continue
        fields = {name: state for name in BOUND_FIELDS if (state := entry.fields.get(name))}
        if "name" not in fields and "metadata" not in fields:
            continue
        counts.bindable_by_email += 1
        counts.sample("bindable_by_email", user_id)
        found[user_id] = fields
    return found
