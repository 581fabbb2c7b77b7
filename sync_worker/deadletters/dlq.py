"""Dead letters: changes Recur refused for good, kept whole until an operator acts.

`dlq:{id}` hash (all values text): id, user_id, reason, http_status, error_code, error_message,
request (the JSON body that was sent), fields (JSON {field: {value, ts_ms}}: what to restore on
replay), event_ids (JSON), attempts, first_failure, last_failure, replay_count, created_at, and
history (JSON list: each operator edit before a replay, {at, by, changes: [{field, action, from,
to}]}).
`dlq-index` zset: id -> last failure time. Entries are written by the pending store's script in
the same step that takes the change out of the pending store, so none is lost between the two.

A replay merges the entry's fields back into the pending store (a field newer in the ledger or
in the pending store wins) and the normal sync path sends it; the entry is deleted only when that
sync succeeds, and if it fails again the same entry comes back with its replay count raised.
If the user's external id was rebound since, the change goes to the id its customer has now.
A replay may first edit the entry (see replay_edit.py): the edit replaces the queued fields and
is appended to the history in one transaction, under the same guard as the replay.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal, cast

import redis

from sync_worker import lua
from sync_worker import redis_keys as keys
from sync_worker.intake.events import SYNCED_FIELDS
from sync_worker.pipeline.pending import PendingStore
from sync_worker.pipeline.records import FieldState
from sync_worker.telemetry import trace

Reason = Literal["not_found", "conflict", "rejected", "retries_exhausted"]
REASONS: tuple[Reason, ...] = ("not_found", "conflict", "rejected", "retries_exhausted")
REPLAY_GUARD_SECONDS = 60

_EDIT = lua.script("deadletters/dlq_edit.lua")

Edit = Callable[["DeadLetter"], tuple[dict[str, dict[str, Any]], dict[str, Any]]]
"""An operator's edit: from the entry, its new `fields` and the history record of the change."""


def new_dead_letter_id(now: float | None = None) -> str:
    """A sortable, unguessable id: milliseconds in hex, then random bits."""
    millis = int((time.time() if now is None else now) * 1000)
    return f"dl_{millis:011x}{secrets.token_hex(5)}"


@dataclass(frozen=True)
class DeadLetter:
    """One dead letter, as operators see it."""

    id: str
    user_id: str
    reason: str
    http_status: int | None
    error_code: str
    error_message: str
    request: dict[str, Any]
    fields: dict[str, dict[str, Any]]
    event_ids: list[str]
    attempts: int
    first_failure: float
    last_failure: float
    replay_count: int = 0
    created_at: float = 0.0
    history: list[dict[str, Any]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (used by `--json`, `export` and the admin API)."""
        return asdict(self)

    def field_states(self) -> dict[str, FieldState]:
        """The fields to restore on replay."""
        return {
            name: FieldState(value=item["value"], ts_ms=int(item["ts_ms"]))
            for name, item in self.fields.items()
        }


def failure_record(
    *,
    reason: Reason,
    http_status: int | None,
    error_code: str,
    error_message: str,
    request: dict[str, Any],
    fields: dict[str, FieldState],
    event_ids: list[str],
    attempts: int,
    now: float,
) -> dict[str, str]:
    """The hash fields a failure sets, on a new entry and on one being replayed."""
    return {
        "reason": reason,
        "http_status": "" if http_status is None else str(http_status),
        "error_code": error_code,
        "error_message": error_message[:500],
        "request": json.dumps(request, ensure_ascii=False),
        "fields": json.dumps(
            {k: {"value": v.value, "ts_ms": v.ts_ms} for k, v in fields.items()},
            ensure_ascii=False,
        ),
        "event_ids": json.dumps(event_ids),
        "attempts": str(attempts),
        "last_failure": repr(now),
    }


def creation_record(*, entry_id: str, user_id: str, first_failure: float) -> dict[str, str]:
    """The hash fields only a new entry gets."""
    return {
        "id": entry_id,
        "user_id": user_id,
        "first_failure": repr(first_failure),
        "created_at": repr(time.time()),
        "replay_count": "0",
    }


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def dead_letter_from_hash(raw: dict[str, str]) -> DeadLetter:
    """Decode one entry."""
    status = raw.get("http_status", "")
    return DeadLetter(
        id=raw["id"],
        user_id=raw["user_id"],
        reason=raw.get("reason", ""),
        http_status=int(status) if status else None,
        error_code=raw.get("error_code", ""),
        error_message=raw.get("error_message", ""),
        request=json.loads(raw.get("request", "{}")),
        fields=json.loads(raw.get("fields", "{}")),
        event_ids=json.loads(raw.get("event_ids", "[]")),
        attempts=int(raw.get("attempts", "0")),
        first_failure=float(raw.get("first_failure", "0")),
        last_failure=float(raw.get("last_failure", "0")),
        replay_count=int(raw.get("replay_count", "0")),
        created_at=float(raw.get("created_at", "0")),
        history=json.loads(raw.get("history", "[]")),
    )


@dataclass(frozen=True)
class ReplayResult:
    """What replaying one entry did: `replayed`, `stale` (a newer state already won),
    `missing` (no such entry) or `busy` (being replayed by someone else)."""

    id: str
    outcome: Literal["replayed", "stale", "missing", "busy", "would_replay"]
    user_id: str = ""
    request: dict[str, Any] = field(default_factory=dict)


class DeadLetterQueue:
    """List, inspect, replay, delete and trim dead letters."""

    def __init__(
        self,
        client: redis.Redis,
        *,
        pending: PendingStore,
        trace_retention_seconds: float = trace.DEFAULT_RETENTION_SECONDS,
    ) -> None:
        self._redis = client
        self._pending = pending
        self._trace_retention = trace_retention_seconds
        self._edit = client.register_script(_EDIT)

    def ids(self) -> list[str]:
        """Every entry id, newest failure first."""
        members = self._redis.zrevrange(keys.DEAD_LETTERS, 0, -1)
        return [_text(m) for m in cast(list[bytes | str], members)]

    def iter_entries(self, *, batch: int = 500) -> Iterator[DeadLetter]:
        """Every entry, newest failure first, read in batches."""
        all_ids = self.ids()
        for start in range(0, len(all_ids), batch):
            pipe = self._redis.pipeline(transaction=False)
            for entry_id in all_ids[start : start + batch]:
                pipe.hgetall(keys.dead_letter(entry_id))
            for raw in pipe.execute():
                if raw:
                    yield dead_letter_from_hash({_text(k): _text(v) for k, v in raw.items()})

    def find(
        self,
        *,
        reason: str | None = None,
        user_id: str | None = None,
        older_than_seconds: float | None = None,
        limit: int | None = None,
    ) -> list[DeadLetter]:
        """Entries matching every filter given, newest failure first."""
        now = time.time()
        found: list[DeadLetter] = []
        for entry in self.iter_entries():
            if reason is not None and entry.reason != reason:
                continue
            if user_id is not None and entry.user_id != user_id:
                continue
            if older_than_seconds is not None and now - entry.last_failure < older_than_seconds:
                continue
            found.append(entry)
            if limit is not None and len(found) >= limit:
                break
        return found

    def page(
        self,
        *,
        reason: str | None = None,
        user_id: str | None = None,
        cursor: int = 0,
        limit: int = 100,
    ) -> tuple[list[DeadLetter], int | None]:
        """Up to `limit` entries matching the filters, newest failure first, from position
        `cursor` of the index; and the cursor of the next page (None after the last one).

        Reads only as far as the page needs (a filter reads ahead in batches). A cursor is a
        position: an entry failing anew between two pages may be seen twice or skipped.
        """
        found: list[DeadLetter] = []
        total = int(self._redis.zcard(keys.DEAD_LETTERS))
        batch = limit if reason is None and user_id is None else max(limit, 500)
        position = max(cursor, 0)
        while position < total:
            members = self._redis.zrevrange(keys.DEAD_LETTERS, position, position + batch - 1)
            ids = [_text(m) for m in cast(list[bytes | str], members)]
            if not ids:
                break
            pipe = self._redis.pipeline(transaction=False)
            for entry_id in ids:
                pipe.hgetall(keys.dead_letter(entry_id))
            for offset, raw in enumerate(pipe.execute()):
                if not raw:
                    continue
                entry = dead_letter_from_hash({_text(k): _text(v) for k, v in raw.items()})
                if (reason is None or entry.reason == reason) and (
                    user_id is None or entry.user_id == user_id
                ):
                    found.append(entry)
                    if len(found) == limit:
                        after = position + offset + 1
                        return found, after if after < total else None
            position += len(ids)
        return found, None

    def get(self, entry_id: str) -> DeadLetter | None:
        """One entry, or None."""
        raw = self._redis.hgetall(keys.dead_letter(entry_id))
        if not raw:
            return None
        return dead_letter_from_hash({_text(k): _text(v) for k, v in raw.items()})

    def counts_by_reason(self) -> dict[str, int]:
        """How many entries per reason (every reason listed, zeros included)."""
        counts: dict[str, int] = dict.fromkeys(REASONS, 0)
        pipe = self._redis.pipeline(transaction=False)
        all_ids = self.ids()
        for entry_id in all_ids:
            pipe.hget(keys.dead_letter(entry_id), "reason")
        for value in pipe.execute() if all_ids else []:
            if value is not None:
                name = _text(value)
                counts[name] = counts.get(name, 0) + 1
        return counts

    def delete(self, entry_ids: list[str]) -> int:
        """Delete entries; returns how many existed."""
        deleted = 0
        for entry_id in entry_ids:
            pipe = self._redis.pipeline(transaction=True)
            pipe.delete(keys.dead_letter(entry_id))
            pipe.zrem(keys.DEAD_LETTERS, entry_id)
            existed, _ = pipe.execute()
            deleted += int(existed)
        return deleted

    def purge(self, *, reason: str | None = None) -> int:
        """Delete every entry, or every entry of one reason."""
        return self.delete([entry.id for entry in self.find(reason=reason)])

    def trim(self, *, older_than_seconds: float) -> int:
        """Delete entries whose last failure is older than the retention."""
        cutoff = time.time() - older_than_seconds
        old = self._redis.zrangebyscore(keys.DEAD_LETTERS, "-inf", repr(cutoff))
        return self.delete([_text(m) for m in cast(list[bytes | str], old)])

    def replay(
        self, entry_id: str, *, dry_run: bool = False, edit: Edit | None = None
    ) -> ReplayResult:
        """Send an entry back through the normal sync path (see the module docstring).

        With `edit`, the entry's queued fields are replaced and the change is added to its
        history first; with `dry_run` as well, nothing is written and the edited PATCH is shown.
        """
        guard = keys.dead_letter_replaying(entry_id)
        if not self._redis.set(guard, "1", nx=True, ex=REPLAY_GUARD_SECONDS):
            return ReplayResult(id=entry_id, outcome="busy")
        try:
            entry = self.get(entry_id)
            if entry is None:
                return ReplayResult(id=entry_id, outcome="missing")
            request, change = entry.request, None
            if edit is not None:
                fields, change = edit(entry)
                entry = replace(entry, fields=fields)
                request = {k: v["value"] for k, v in fields.items() if k in SYNCED_FIELDS}
            if dry_run:
                return ReplayResult(
                    id=entry_id, outcome="would_replay", user_id=entry.user_id, request=request
                )
            # A rebind since the failure moved the customer: the change goes where it is now.
            user_id = self._pending.current_id(entry.user_id)
            merged = self._pending.restore(user_id, entry.field_states(), replay_of=entry.id)
            if merged < 0:
                return ReplayResult(id=entry_id, outcome="busy", user_id=user_id)
            if merged and change is not None:
                # Recorded once the edited change is queued, so a replay already under way
                # (busy above) cannot leave a history entry for an edit that never went out.
                self._record_edit(entry_id, entry.fields, change)
            outcome: Literal["replayed", "stale"] = "replayed" if merged else "stale"
            edited = [c.get("field") for c in change.get("changes", [])] if change else []
            trace.record(
                self._redis,
                user_id,
                "replay",
                retention_seconds=self._trace_retention,
                dead_letter_id=entry_id,
                outcome=outcome,
                edited=edited,
            )
            return ReplayResult(id=entry_id, outcome=outcome, user_id=user_id, request=request)
        finally:
            self._redis.delete(guard)

    def _record_edit(
        self, entry_id: str, fields: dict[str, dict[str, Any]], change: dict[str, Any]
    ) -> None:
        """Replace the queued fields and append `change` to the history, in one step."""
        self._edit(
            keys=[keys.dead_letter(entry_id)],
            args=[json.dumps(fields, ensure_ascii=False), json.dumps(change, ensure_ascii=False)],
        )
