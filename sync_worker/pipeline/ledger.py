"""The ledger: per user, what Recur should hold, as last applied (or imported).

Users are spread over LEDGER_BUCKETS hashes, `ledger-bucket:{n}` (`redis_keys.ledger` names a
user's): a user's entry is one field, the user id, whose value is packed text, fields sorted
by code:

    applied_at LF code TAB event time (ms) TAB value (JSON) LF code TAB ...

A field's code is one letter for the fields events carry (CODES), else its name.

A hash whose values are all at most `hash-max-listpack-value` bytes is a listpack in Redis, one
block of memory, so a customer costs its bytes and no key of its own (README, Sizing Redis).
`ledger_fn.lua` is this layout for the scripts; tests hold the two to the same buckets and text.
Writes after a sync happen inside the pending store's scripts, so that a field never goes back
in time; this module reads, seeds from a merchant's export, and moves entries of the layout
before (a `ledger:{user}` hash per user, listed in `ledger-index`) into the buckets: the
scripts read those merged in until then.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any, cast

import redis

from sync_worker import lua
from sync_worker import redis_keys as keys
from sync_worker.pipeline.records import FieldState, dumps

_SEED = lua.script("pipeline/ledger_fn.lua", "pipeline/ledger_seed.lua")
_GET_MANY = lua.script("pipeline/ledger_fn.lua", "pipeline/ledger_get_many.lua")
_COUNT = lua.script("pipeline/ledger_fn.lua", "pipeline/ledger_count.lua")
_MIGRATE = lua.script("pipeline/ledger_fn.lua", "pipeline/ledger_migrate.lua")
_FORGET = lua.script("pipeline/ledger_fn.lua", "pipeline/ledger_forget.lua")

CODES = {"email": "e", "external_id": "x", "metadata": "m", "name": "n"}
"""Field name -> its code in a packed entry (ledger_fn.lua's LEDGER_CODES)."""
_NAMES = {code: name for name, code in CODES.items()}

MIGRATE_BATCH = 500
"""Users moved per script call: each call holds Redis for about a millisecond."""


@dataclass(frozen=True)
class LedgerEntry:
    """What Recur should hold for one user."""

    user_id: str
    fields: dict[str, FieldState]
    applied_at: float | None


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def unpack(user_id: str, packed: str) -> LedgerEntry:
    """Decode a user's packed entry (the value of its field in its bucket)."""
    applied_at, *lines = packed.split("\n")
    fields: dict[str, FieldState] = {}
    for line in lines:
        code, stamp, value = line.split("\t", 2)
        fields[_NAMES.get(code, code)] = FieldState(
            value=json.loads(value), ts_ms=int(float(stamp))
        )
    return LedgerEntry(
        user_id=user_id, fields=fields, applied_at=float(applied_at) if applied_at else None
    )


class Ledger:
    """Read, seed and migrate the applied state."""

    def __init__(self, client: redis.Redis) -> None:
        self._redis = client
        self._seed = client.register_script(_SEED)
        self._get_many = client.register_script(_GET_MANY)
        self._count = client.register_script(_COUNT)
        self._migrate = client.register_script(_MIGRATE)
        self._forget = client.register_script(_FORGET)

    def get(self, user_id: str) -> LedgerEntry | None:
        """The entry of one user, or None."""
        return self.get_many([user_id]).get(user_id)

    def unbound_at(self, user_id: str) -> int | None:
        """When (event time, ms) an event unbound this user (`new_user_id: null`, applied), or
        None: the unbind is recorded as the field `external_id` set to null."""
        entry = self.get(user_id)
        moved = entry.fields.get("external_id") if entry is not None else None
        if moved is None or moved.value is not None:
            return None
        return moved.ts_ms

    def forget_unbind(self, user_id: str) -> None:
        """After the user is bound again (an operator's replay): its unbind no longer holds."""
        self._forget(keys=[keys.ledger(user_id)], args=[user_id, "external_id"])

    def get_many(self, user_ids: list[str]) -> dict[str, LedgerEntry]:
        """Entries of several users in one round trip; users without one are left out."""
        if not user_ids:
            return {}
        reply = cast(
            list[bytes | str | None],
            self._get_many(keys=[keys.ledger(user_id) for user_id in user_ids], args=user_ids),
        )
        return {
            user_id: unpack(user_id, _text(packed))
            for user_id, packed in zip(user_ids, reply, strict=True)
            if packed is not None
        }

    def count(self) -> int:
        """How many users have an entry (one HLEN per bucket, inside Redis)."""
        return int(cast(int, self._count()))

    def seed(self, user_id: str, fields: dict[str, Any], *, ts_ms: int | None = None) -> None:
        """Record desired values (from an import); a field newer in the ledger is kept."""
        stamp = ts_ms if ts_ms is not None else int(time.time() * 1000)
        args: list[Any] = [user_id, f"{time.time():.3f}"]
        for name, value in fields.items():
            # The encoding the pending store writes after a sync: a value reads the same
            # whichever wrote it (the reconciliation decodes both sides anyway).
            args += [name, dumps(value), stamp]
        self._seed(keys=[keys.ledger(user_id), keys.EMAIL_USERS], args=args)

    def migrate(self, *, batch: int = MIGRATE_BATCH) -> int:
        """Move every entry of the layout before the buckets into its bucket; how many moved.

        Each batch is one script, merging per field (the newer event time wins) with what the
        bucket already holds, so processes upgraded at the same time may all run it: they
        share the work, and no entry is lost or read half-moved meanwhile."""
        moved = 0
        while True:
            done, left = cast(list[int], self._migrate(args=[batch]))
            moved += int(done)
            if not left:
                return moved
