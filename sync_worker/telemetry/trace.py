"""The per-user trace: what happened to one user, for `sync-worker trace`, the
admin API and the dashboard's user page (timeline.py puts it together with the current state).

`trace:{user}` is a list, newest first, of JSON objects: `kind`, `at` (unix time) and the
details. `LPUSH` then `LTRIM` keeps the newest `max_entries`; it expires `TRACE_RETENTION_DAYS`
after its last entry. Not a stream: Redis gives every new stream a 4 KB node up front, so a user
with one event would cost ~4.7 KB; a short list costs a few hundred bytes (bench/redis_memory.py).

Nothing here costs the hot paths a round trip of its own:
- intake: the accept script (pending_accept.lua) adds the `event` entry (merged, duplicate or
  stale);
- sync: `TraceLog.add` buffers entries (`attempt`, `held`, `rebound`, ...) that `Stats.flush`
  sends in the one script call it makes per batch anyway (stats_flush.lua, the same
  LPUSH, LTRIM and EXPIRE as `record`);
- operators' actions (replays, edits) are rare, and call `record` directly;
- a signed delivery refused as invalid is traced (`refused`) when it names a valid user id:
  the web buffers it like the sync path (`refused_event`), sent by its next stats flush.

Kinds: event; attempt (its `result`: applied, more, retry, quick_retry, dead_letter, ...);
held (`by` the breaker, the auth pause or the rate limit); replay; rebound; bound_by_email and
bind_by_email_skipped.
"""

from __future__ import annotations

import json
import os
import re
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis

from sync_worker import redis_keys as keys
from sync_worker.intake.events import ID_MAX_CHARS
from sync_worker.recur.models import EXTERNAL_ID_PATTERN

DAY = 24 * 3600
DEFAULT_RETENTION_SECONDS = 7 * DAY
"""TRACE_RETENTION_DAYS' default, for stores built without settings (tests, benches)."""
MAX_ENTRIES = 100
"""Entries kept per user; older ones are trimmed."""
MAX_BUFFERED = 10_000
"""Entries a process holds while Redis is unreachable; the oldest are dropped past it."""
ERRORS_KEPT = 3
_USER_ID = re.compile(EXTERNAL_ID_PATTERN)


def worker_name() -> str:
    """`hostname:pid` of this process (read each time: a forked worker has its own pid)."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _dumps(details: dict[str, Any]) -> str:
    return json.dumps(details, ensure_ascii=False, separators=(",", ":"), default=str)


def record(
    client: redis.Redis | Any,
    user_id: str,
    kind: str,
    *,
    retention_seconds: float = DEFAULT_RETENTION_SECONDS,
    max_entries: int = MAX_ENTRIES,
    **details: Any,
) -> None:
    """Add one entry to a user's trace now, on `client` (a Redis client or a pipeline).

    For callers off the hot path, or ones that already hold a pipeline to send: e.g.
    `trace.record(pipe, user_id, "bound_by_email", customer_id=...)`.
    """
    details.setdefault("at", round(time.time(), 3))
    _add(client, user_id, _dumps({"kind": kind, **details}), retention_seconds, max_entries)


def _add(client: Any, user_id: str, data: str, retention_seconds: float, max_entries: int) -> None:
    key = keys.trace(user_id)
    client.lpush(key, data)
    client.ltrim(key, 0, max_entries - 1)
    client.expire(key, int(retention_seconds))


class TraceLog:
    """Trace entries buffered in this process until the next stats flush sends them."""

    def __init__(
        self,
        *,
        retention_seconds: float = DEFAULT_RETENTION_SECONDS,
        max_entries: int = MAX_ENTRIES,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.retention_seconds = retention_seconds
        self.max_entries = max_entries
        self._clock = clock
        self._lock = threading.Lock()
        self._buffer: list[tuple[str, str]] = []

    def add(self, user_id: str, kind: str, **details: Any) -> None:
        """Buffer one entry, stamped now (sent with the next `Stats.flush`)."""
        details.setdefault("at", round(self._clock(), 3))
        entry = (user_id, _dumps({"kind": kind, **details}))
        with self._lock:
            self._buffer.append(entry)
            if len(self._buffer) > MAX_BUFFERED:
                del self._buffer[: len(self._buffer) - MAX_BUFFERED]

    def drain(self) -> list[tuple[str, str]]:
        """Take every buffered entry."""
        with self._lock:
            taken, self._buffer = self._buffer, []
        return taken

    def put_back(self, entries: list[tuple[str, str]]) -> None:
        """Return entries a failed flush could not send, ahead of newer ones."""
        with self._lock:
            self._buffer[:0] = entries
            if len(self._buffer) > MAX_BUFFERED:
                del self._buffer[: len(self._buffer) - MAX_BUFFERED]


@dataclass(frozen=True)
class TraceEntry:
    """One thing that happened to a user."""

    at: float
    kind: str
    details: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict: `at`, `kind` and the details."""
        return {**self.details, "at": self.at, "kind": self.kind}


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def read(client: redis.Redis, user_id: str, *, limit: int = MAX_ENTRIES) -> list[TraceEntry]:
    """A user's trace, newest first (by when it happened, not when it reached Redis)."""
    raw: list[bytes | str] = client.lrange(keys.trace(user_id), 0, limit - 1)
    entries = []
    for item in raw:
        details = json.loads(_text(item))
        at = float(details.pop("at", 0))
        entries.append(TraceEntry(at=at, kind=str(details.pop("kind", "?")), details=details))
    # Sync entries reach Redis at the end of their batch, possibly after a newer event's.
    entries.sort(key=lambda entry: entry.at, reverse=True)
    return entries


def _named_user(body: bytes) -> str | None:
    """The user id a refused body names, if it is one intake would accept (else None)."""
    try:
        parsed = json.loads(body)
    except ValueError:
        return None
    if not isinstance(parsed, dict):
        return None
    data = parsed.get("data")
    candidates = [parsed.get("userId"), parsed.get("user_id")]
    if isinstance(data, dict):
        candidates.insert(0, data.get("user_id"))
    for candidate in candidates:
        valid = isinstance(candidate, str) and len(candidate) <= ID_MAX_CHARS
        if valid and _USER_ID.fullmatch(str(candidate)):
            return str(candidate)
    return None


def refused_event(
    log: TraceLog, body: bytes, *, event_id: str, errors: list[dict[str, str]]
) -> None:
    """Trace a signed delivery refused as invalid, on the user it names (if any): why a change
    never arrived is part of that user's story. Its first few errors are kept, shortened."""
    user_id = _named_user(body)
    if user_id is None:
        return
    kept = [
        {"field": str(e.get("field", ""))[:80], "message": str(e.get("message", ""))[:160]}
        for e in errors[:ERRORS_KEPT]
    ]
    log.add(user_id, "event", id=event_id, outcome="refused", errors=kept)
