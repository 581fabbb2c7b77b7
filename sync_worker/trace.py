"""The per-user trace: what happened to one user, newest last, for `sync-worker trace`, the
admin API and the dashboard's user page (timeline.py puts it together with the current state).

`trace:{user}` is a stream. Every entry has the same two fields, `k` (the kind) and `d` (a JSON
object of details), so Redis keeps the field names once per stream node. It is capped with
`XADD ... MAXLEN ~ max_entries` and expires `TRACE_RETENTION_DAYS` after its last entry.

Nothing here costs the hot paths a round trip of its own:
- intake: the accept script (pending.py) adds the `event` entry (merged, duplicate or stale);
- sync: `TraceLog.add` buffers entries (`attempt`, `held`, `dead_letter`, `rebound`, ...) that
  `Stats.flush` sends in the pipeline it sends once per batch anyway;
- operators' actions (replays, edits) are rare, and call `record` directly.

Kinds: event, attempt, held, dead_letter, replay, rebound, bound_by_email.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import redis

from sync_worker import redis_keys as keys

DAY = 24 * 3600
DEFAULT_RETENTION_SECONDS = 7 * DAY
"""TRACE_RETENTION_DAYS' default, for stores built without settings (tests, benches)."""
MAX_ENTRIES = 200
"""Entries kept per user (approximately: Redis trims whole stream nodes)."""
MAX_BUFFERED = 10_000
"""Entries a process holds while Redis is unreachable; the oldest are dropped past it."""


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
    _add(client, user_id, kind, _dumps(details), retention_seconds, max_entries)


def _add(
    client: Any, user_id: str, kind: str, data: str, retention_seconds: float, max_entries: int
) -> None:
    key = keys.trace(user_id)
    client.xadd(key, {"k": kind, "d": data}, maxlen=max_entries, approximate=True)
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
        self._buffer: list[tuple[str, str, str]] = []

    def add(self, user_id: str, kind: str, **details: Any) -> None:
        """Buffer one entry, stamped now (sent with the next `Stats.flush`)."""
        details.setdefault("at", round(self._clock(), 3))
        entry = (user_id, kind, _dumps(details))
        with self._lock:
            self._buffer.append(entry)
            if len(self._buffer) > MAX_BUFFERED:
                del self._buffer[: len(self._buffer) - MAX_BUFFERED]

    def drain(self) -> list[tuple[str, str, str]]:
        """Take every buffered entry."""
        with self._lock:
            taken, self._buffer = self._buffer, []
        return taken

    def put_back(self, entries: list[tuple[str, str, str]]) -> None:
        """Return entries a failed flush could not send, ahead of newer ones."""
        with self._lock:
            self._buffer[:0] = entries
            if len(self._buffer) > MAX_BUFFERED:
                del self._buffer[: len(self._buffer) - MAX_BUFFERED]

    def write(self, pipe: Any, entries: list[tuple[str, str, str]]) -> None:
        """Queue `entries` on a pipeline (the caller sends it)."""
        for user_id, kind, data in entries:
            _add(pipe, user_id, kind, data, self.retention_seconds, self.max_entries)


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
    raw = cast(
        list[tuple[bytes | str, dict[bytes | str, bytes | str]]],
        client.xrevrange(keys.trace(user_id), count=limit),
    )
    entries = []
    for entry_id, fields in raw:
        decoded = {_text(k): _text(v) for k, v in fields.items()}
        details = json.loads(decoded.get("d", "{}"))
        # Entries written by the accept script are stamped by the stream id (Redis' clock).
        at = float(details.pop("at", int(_text(entry_id).partition("-")[0]) / 1000))
        entries.append(TraceEntry(at=at, kind=decoded.get("k", "?"), details=details))
    entries.sort(key=lambda entry: entry.at, reverse=True)
    return entries
