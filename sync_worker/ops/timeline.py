"""What happened to one user, in one place: the trace (trace.py) newest first, the change still
pending, the ledger, the user's dead letters and, when asked, the customer as Recur has it now.

`sync-worker trace`, `GET /admin/api/users/{user_id}` and the page `/admin/users/{user_id}` all
read it from here. Recur is compared on what it returns: `name` and `external_id`. Metadata is
write-only at Recur (never returned), so it is marked "not readable", never a difference. A
failing Recur call is reported, never raised, as in triage.py.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any, Literal, cast

import redis

from sync_worker import redis_keys as keys
from sync_worker.deadletters.dlq import DeadLetter, DeadLetterQueue
from sync_worker.intake.events import SYNCED_FIELDS
from sync_worker.pipeline.flow import Throttled
from sync_worker.pipeline.ledger import Ledger
from sync_worker.pipeline.pending import PENDING_EVENTS
from sync_worker.pipeline.records import snapshot_from
from sync_worker.recur.client import RecurClient
from sync_worker.recur.errors import NotFound, RecurError
from sync_worker.telemetry import trace

READABLE_FIELDS = ("name", "external_id")
"""Fields Recur returns, so they can be compared."""
Verdict = Literal["same", "differs", "not readable", "not synced yet"]


@dataclass(frozen=True)
class FieldRow:
    """One synced field: queued, applied (with its event time) and, if fetched, Recur's."""

    name: str
    pending: Any = None
    in_pending: bool = False
    applied: Any = None
    applied_ts_ms: int | None = None
    recur: Any = None
    verdict: Verdict | None = None


@dataclass(frozen=True)
class UserTrace:
    """Everything known about one user."""

    user_id: str
    timeline: list[trace.TraceEntry]
    pending: dict[str, Any] | None
    applied_at: float | None
    rows: list[FieldRow]
    dead_letters: list[DeadLetter] = field(default_factory=list)
    recur: dict[str, Any] | None = None
    recur_error: str | None = None
    recur_fetched: bool = False

    @property
    def known(self) -> bool:
        """Whether anything at all is recorded about this user."""
        return bool(
            self.timeline
            or self.pending
            or self.applied_at is not None
            or self.dead_letters
            or self.recur
        )

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (`trace --json` and the admin API)."""
        return {
            "user_id": self.user_id,
            "timeline": [entry.to_dict() for entry in self.timeline],
            "pending": self.pending,
            "ledger": {
                "applied_at": self.applied_at,
                "fields": {
                    row.name: {"value": row.applied, "ts_ms": row.applied_ts_ms}
                    for row in self.rows
                    if row.applied_ts_ms is not None
                },
            },
            "dead_letters": [entry.to_dict() for entry in self.dead_letters],
            "recur": self.recur if self.recur_fetched else None,
            "recur_error": self.recur_error,
            "comparison": [
                {
                    "field": row.name,
                    "pending": row.pending if row.in_pending else None,
                    "applied": row.applied,
                    "recur": row.recur,
                    "verdict": row.verdict,
                }
                for row in self.rows
            ]
            if self.recur_fetched
            else None,
        }


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _pending(client: redis.Redis, user_id: str) -> dict[str, Any] | None:
    """The change waiting for this user, and where it stands (due, being sent)."""
    pipe = client.pipeline(transaction=False)
    pipe.hgetall(keys.pending(user_id))
    pipe.lrange(PENDING_EVENTS + user_id, 0, -1)
    pipe.zscore(keys.DUE, user_id)
    pipe.zscore(keys.INFLIGHT, user_id)
    pipe.hgetall(keys.fence(user_id))
    raw, events, due, inflight, fence = pipe.execute()
    if not raw:
        return None
    flat = [_text(item) for pair in cast(dict[Any, Any], raw).items() for item in pair]
    fenced = [_text(item) for pair in cast(dict[Any, Any], fence).items() for item in pair]
    snapshot = snapshot_from(user_id, flat, [_text(e) for e in events], fenced)
    return {
        "fields": {
            name: {"value": state.value, "ts_ms": state.ts_ms, "event_id": state.event_id}
            for name, state in snapshot.fields.items()
        },
        "event_ids": snapshot.event_ids,
        "due_at": float(due) if due is not None else None,
        "sending": inflight is not None,
        "attempts": snapshot.attempts,
        "first_seen": snapshot.first_seen,
        "retry_since": snapshot.retry_since,
        "last_error": snapshot.last_error,
        "replay_of": snapshot.replay_of,
        # After a send whose outcome was ambiguous: Recur is read back once it can have landed.
        "read_back": snapshot.verify is not None,
        "fenced_until": snapshot.fenced_until,
    }


def _fetch(recur: RecurClient, user_id: str) -> tuple[dict[str, Any] | None, str | None]:
    try:
        customer = recur.get_customer_by_external_id(user_id)
    except NotFound:
        return None, f"Recur has no customer with external_id {user_id!r}"
    except (RecurError, Throttled) as error:
        return None, f"could not fetch the customer from Recur: {error}"
    return customer.model_dump(mode="json"), None


def _verdict(name: str, expected: Any, has_expected: bool, recur: dict[str, Any]) -> Verdict:
    if name not in READABLE_FIELDS:
        return "not readable"
    if not has_expected:
        return "not synced yet"
    return "same" if recur.get(name) == expected else "differs"


def gather(
    client: redis.Redis,
    user_id: str,
    *,
    ledger: Ledger,
    dlq: DeadLetterQueue,
    recur: RecurClient | None = None,
    recur_unavailable: str = "",
    fetch_recur: bool = False,
    limit: int = trace.MAX_ENTRIES,
) -> UserTrace:
    """Put together what is known about `user_id`; with `fetch_recur`, ask Recur too (`recur`
    None then says why it was not asked: `recur_unavailable`)."""
    timeline = trace.read(client, user_id, limit=limit)
    pending = _pending(client, user_id)
    applied = ledger.get(user_id)
    dead = dlq.find(user_id=user_id)
    customer, error = None, None
    if fetch_recur:
        if recur is None:
            error = recur_unavailable or "not fetched from Recur"
        else:
            customer, error = _fetch(recur, user_id)
    queued = pending["fields"] if pending else {}
    applied_fields = applied.fields if applied is not None else {}
    rows = []
    for name in SYNCED_FIELDS:
        state = applied_fields.get(name)
        in_pending = name in queued
        if state is None and not in_pending and name not in READABLE_FIELDS:
            continue
        verdict: Verdict | None = None
        if customer is not None:
            # What Recur should hold is what we last applied; external_id is the user id itself.
            expected = state.value if state is not None else None
            has_expected = state is not None
            if name == "external_id" and state is None:
                expected, has_expected = user_id, True
            verdict = _verdict(name, expected, has_expected, customer)
        rows.append(
            FieldRow(
                name=name,
                pending=queued[name]["value"] if in_pending else None,
                in_pending=in_pending,
                applied=state.value if state is not None else None,
                applied_ts_ms=state.ts_ms if state is not None else None,
                recur=customer.get(name) if customer is not None else None,
                verdict=verdict,
            )
        )
    return UserTrace(
        user_id=user_id,
        timeline=timeline,
        pending=pending,
        applied_at=applied.applied_at if applied is not None else None,
        rows=rows,
        dead_letters=dead,
        recur=customer,
        recur_error=error,
        recur_fetched=fetch_recur,
    )


def _clock(moment: Any) -> str:
    return time.strftime("%H:%M:%S", time.localtime(float(moment)))


def _answer(d: dict[str, Any]) -> str:
    if d.get("status") is None and not d.get("code"):
        return ""
    status = d.get("status") or "no response"
    message = f" {d['message']}" if d.get("message") else ""
    return f" -> {status} {d.get('code') or ''}{':' if message else ''}{message}".rstrip()


def _event(d: dict[str, Any]) -> str:
    fields = ", ".join(d.get("fields", [])) or "no fields"
    text = f"{d.get('type', 'event')} {d.get('id')} ({fields}): {d.get('outcome')}"
    if d.get("outcome") == "merged":
        left_out = sorted(set(d.get("fields", [])) - set(d.get("merged", d.get("fields", []))))
        if left_out:
            text += f" (stale: {', '.join(left_out)})"
        if d.get("due") is not None:
            text += f", due {_clock(d['due'])}"
    elif d.get("outcome") == "stale":
        text += " (older than what was applied or pending: changes nothing)"
    elif d.get("outcome") == "refused":
        reasons = "; ".join(f"{e.get('field')}: {e.get('message')}" for e in d.get("errors", []))
        text = f"delivery {d.get('id')}: refused (422), {reasons}"
    return text


def _attempt(d: dict[str, Any]) -> str:
    fields = ", ".join(d.get("fields", [])) or "nothing"
    text = f"PATCH {fields}{_answer(d)}: {d.get('result')}"
    if d.get("result") == "quick_retry":
        text = f"call to Recur{_answer(d)}: tried again at once (quick retry)"
    elif str(d.get("result", "")).startswith("read_back"):
        text = f"read-back of Recur{_answer(d)}: {d.get('result')}"
    if d.get("result") == "applied" or d.get("result") == "more":
        text = f"PATCH {fields} -> {d.get('status', 200)}: {d.get('result')}"
    if d.get("dead_letter_id"):
        text += f" as dead letter {d['dead_letter_id']} ({d.get('reason')})"
    if d.get("retry_at") is not None:
        text += f", retry at {_clock(d['retry_at'])}"
    extras = [f"by {d['worker']}" if d.get("worker") else ""]
    if d.get("latency_ms") is not None:
        extras.append(f"{d['latency_ms']} ms")
    if d.get("attempts"):
        extras.append(f"round {d['attempts']}")
    return text + "".join(f"; {extra}" for extra in extras if extra)


def _stamp(moment: Any) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(moment)))


def pending_summary(pending: dict[str, Any] | None) -> str:
    """One sentence on the change waiting for a user (the CLI and the page print it)."""
    if pending is None:
        return "Nothing pending."
    due = _stamp(pending["due_at"]) if pending["due_at"] else "-"
    if pending["fields"]:
        state = "being sent now" if pending["sending"] else f"due {due}"
        text = f"Pending: {', '.join(pending['fields'])}, {state}"
    elif pending["read_back"]:
        text = (
            f"Sent; a read-back of Recur is due {due} (a send's outcome was ambiguous: it checks "
            "that no late PATCH overwrote it)"
        )
    else:
        text = f"Pending: no fields, due {due}"
    fenced = pending.get("fenced_until")
    if fenced is not None and fenced > time.time():
        text += f"; fenced until {_stamp(fenced)}"
    if pending.get("last_error"):
        text += (
            f"; failed rounds {pending['attempts']}, last error "
            f"{json.dumps(pending['last_error'], ensure_ascii=False)}"
        )
    return text + "."


def describe(entry: trace.TraceEntry) -> str:
    """One line saying what an entry means, for the CLI table and the page."""
    d = entry.details
    if entry.kind == "event":
        return _event(d)
    if entry.kind == "attempt":
        return _attempt(d)
    if entry.kind == "held":
        text = f"held by the {str(d.get('by', '?')).replace('_', ' ')}{_answer(d)}"
        if d.get("retry_at") is not None:
            text += f", due again {_clock(d['retry_at'])}"
        return text
    if entry.kind == "replay":
        edited = f", edited {', '.join(d['edited'])}" if d.get("edited") else ""
        return f"dead letter {d.get('dead_letter_id')} replayed: {d.get('outcome')}{edited}"
    if entry.kind == "rebound":
        if "to" in d:
            return f"external id changed: now {d['to']} (ledger and pending moved there)"
        return f"external id changed from {d.get('from')} (ledger and pending moved here)"
    pairs = ", ".join(f"{k}={v}" for k, v in sorted(d.items()))
    return f"{entry.kind.replace('_', ' ')}: {pairs}" if pairs else entry.kind
