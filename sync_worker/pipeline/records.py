"""The records of the pending store: claims, desired fields, snapshots and script replies.

Plain values, decoded from Redis replies; `PendingStore` (pending.py) makes and takes them, and
the ledger, the dead letters and the operators' views share them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Claim:
    """The right to send for one user, until its lease lapses."""

    user_id: str
    token: str


@dataclass(frozen=True)
class FieldState:
    """A desired field: its value, the event time that set it, and that event."""

    value: Any
    ts_ms: int
    event_id: str = ""


@dataclass(frozen=True)
class Snapshot:
    """What a claim read of a user's pending change, to send and then settle."""

    user_id: str
    fields: dict[str, FieldState]
    version: int
    attempts: int
    first_seen: float
    retry_since: float | None
    event_ids: list[str] = field(default_factory=list)
    replay_of: list[str] = field(default_factory=list)
    last_error: dict[str, Any] | None = None
    verify: int | None = None
    """Set after an ambiguous outcome: read Recur back once nothing is left to send (the value
    counts the resends such read-backs already caused)."""
    fenced_until: float | None = None
    """Until when an ambiguous PATCH of this user may still land: send nothing newer before."""
    fenced_marks: dict[str, list[int | str]] = field(default_factory=dict)
    """The marks of the fields that PATCH carried (see `sent_marks`)."""

    def held_by_fence(self, now: float) -> bool:
        """True while an ambiguous PATCH may still land and would undo a field of this one: one
        carrying the same field with another mark. Re-sending what it carried is safe."""
        if self.fenced_until is None or self.fenced_until <= now:
            return False
        if not self.fields:  # a read-back: it waits for anything late to have landed
            return True
        marks = self.sent_marks()
        return any(marks[name] != mark for name, mark in self.fenced_marks.items() if name in marks)

    def sent_marks(self) -> dict[str, list[int | str]]:
        """Field -> [event time, event id]: what settling compares, so that a newer value that
        arrived meanwhile (even with the same event time) is never mistaken for the one sent."""
        return {name: [state.ts_ms, state.event_id] for name, state in self.fields.items()}


@dataclass(frozen=True)
class AcceptResult:
    """What intake did with an event."""

    duplicate: bool
    changed: bool
    version: int

    @classmethod
    def from_reply(cls, reply: Any) -> AcceptResult:
        """Decode the accept script's reply `[new, version]`."""
        new, version = (int(part) for part in reply)
        return cls(duplicate=not new, changed=version > 0, version=version)


def as_text(value: bytes | str) -> str:
    """A Redis reply item as text (clients may or may not decode)."""
    return value.decode() if isinstance(value, bytes) else value


def _pairs(flat: list[str]) -> dict[str, str]:
    return dict(zip(flat[::2], flat[1::2], strict=True))


@dataclass(frozen=True)
class Verified:
    """What a read-back after an ambiguous outcome found: 'more' (something to send) or 'done',
    how many fields Recur held otherwise than the ledger, and whether they were queued again."""

    state: str
    differ: int
    resent: bool


def snapshot_from(
    user_id: str, flat: list[str], event_ids: list[str], fence: list[str] | None = None
) -> Snapshot:
    """Decode a pending hash, its event ids and its fence (HGETALL replies, as text)."""
    raw = _pairs(flat)
    fields = {
        name[2:]: FieldState(
            value=json.loads(raw["v:" + name[2:]]),
            ts_ms=int(float(value)),
            event_id=raw.get("e:" + name[2:], ""),
        )
        for name, value in raw.items()
        if name.startswith("t:")
    }
    retry_since = raw.get("retry_since")
    last_error = raw.get("last_error")
    verify = raw.get("verify")
    fenced = _pairs(fence or [])
    return Snapshot(
        user_id=user_id,
        fields=fields,
        version=int(raw.get("version", "0")),
        attempts=int(raw.get("attempts", "0")),
        first_seen=float(raw.get("first_seen", "0")),
        retry_since=float(retry_since) if retry_since else None,
        event_ids=event_ids,
        replay_of=json.loads(raw.get("replay_of", "[]")),
        last_error=json.loads(last_error) if last_error else None,
        verify=int(verify) if verify is not None else None,
        fenced_until=float(fenced["until"]) if "until" in fenced else None,
        fenced_marks={k[2:]: json.loads(v) for k, v in fenced.items() if k.startswith("m:")},
    )


def dumps(value: Any) -> str:
    """A value as the store keeps it: compact JSON, keys sorted, so equal values compare equal."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), sort_keys=True)
