"""The ledger: per user, what Recur should hold, as last applied (or imported).

`ledger:{user}` hash: `v:{field}` the value as JSON, `t:{field}` the event time (ms) it came
from, `applied_at`. `ledger-index` is the set of user ids with an entry. Writes after a sync
happen inside the pending store's scripts, so that a field never goes back in time; this module
reads, and seeds from a merchant's export.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, cast

import redis

from sync_worker import lua
from sync_worker import redis_keys as keys
from sync_worker.pipeline.records import FieldState, dumps

_SEED = lua.script("pipeline/ledger_seed.lua")

_GET_MANY = lua.script("pipeline/ledger_get_many.lua")


@dataclass(frozen=True)
class LedgerEntry:
    """What Recur should hold for one user."""

    user_id: str
    fields: dict[str, FieldState]
    applied_at: float | None


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def entry_from_hash(user_id: str, raw: dict[str, str]) -> LedgerEntry:
    """Decode a ledger hash (already decoded to text)."""
    fields = {
        name[2:]: FieldState(value=json.loads(raw["v:" + name[2:]]), ts_ms=int(float(value)))
        for name, value in raw.items()
        if name.startswith("t:") and "v:" + name[2:] in raw
    }
    applied_at = raw.get("applied_at")
    return LedgerEntry(
        user_id=user_id, fields=fields, applied_at=float(applied_at) if applied_at else None
    )


class Ledger:
    """Read and seed the applied state."""

    def __init__(self, client: redis.Redis) -> None:
        self._redis = client
        self._seed = client.register_script(_SEED)
        self._get_many = client.register_script(_GET_MANY)

    def get(self, user_id: str) -> LedgerEntry | None:
        """The entry of one user, or None."""
        raw = self._redis.hgetall(keys.ledger(user_id))
        if not raw:
            return None
        return entry_from_hash(user_id, {_text(k): _text(v) for k, v in raw.items()})

    def unbound_at(self, user_id: str) -> int | None:
        """When (event time, ms) an event unbound this user (`new_user_id: null`, applied), or
        None: the unbind is recorded as the field `external_id` set to null."""
        raw = cast(
            list[Any], self._redis.hmget(keys.ledger(user_id), ["v:external_id", "t:external_id"])
        )
        value, stamp = raw
        if value is None or json.loads(value) is not None or stamp is None:
            return None
        return int(float(_text(stamp)))

    def forget_unbind(self, user_id: str) -> None:
        """After the user is bound again (an operator's replay): its unbind no longer holds."""
        self._redis.hdel(keys.ledger(user_id), "v:external_id", "t:external_id")

    def get_many(self, user_ids: list[str]) -> dict[str, LedgerEntry]:
        """Entries of several users in one round trip; users without one are left out."""
        if not user_ids:
            return {}
        reply = self._get_many(keys=[keys.ledger(user_id) for user_id in user_ids])
        found: dict[str, LedgerEntry] = {}
        # cjson encodes an empty HGETALL as {} rather than []: both mean "no entry".
        for user_id, flat in zip(user_ids, json.loads(reply), strict=True):
            if flat:
                found[user_id] = entry_from_hash(
                    user_id, dict(zip(flat[::2], flat[1::2], strict=True))
                )
        return found

    def user_ids(self, *, batch: int = 1000) -> Iterator[str]:
        """Every user id with an entry, scanned in batches (memory stays one batch)."""
        for member in self._redis.sscan_iter(keys.LEDGER_INDEX, count=batch):
            yield _text(cast(bytes | str, member))

    def count(self) -> int:
        """How many users have an entry."""
        return int(self._redis.scard(keys.LEDGER_INDEX))

    def seed(self, user_id: str, fields: dict[str, Any], *, ts_ms: int | None = None) -> None:
        """Record desired values (from an import); a field newer in the ledger is kept."""
        stamp = ts_ms if ts_ms is not None else int(time.time() * 1000)
        args: list[Any] = [user_id, repr(time.time())]
        for name, value in fields.items():
            # The encoding the pending store writes after a sync: a value reads the same
            # whichever wrote it (the reconciliation decodes both sides anyway).
            args += [name, dumps(value), stamp]
        self._seed(keys=[keys.ledger(user_id), keys.LEDGER_INDEX, keys.EMAIL_USERS], args=args)
