"""One Lua script per page of the reconciliation: drift.compare_page, run inside Redis.

Decoding a page's ledger entries into Python objects and comparing them cost the reconciliation
more than fetching the page did. Redis is another process, so a comparison it runs overlaps with
our Python (the next page's fetch) instead of adding to it under the GIL; and every round trip
of the comparing thread waits for the GIL on the way back, so the page makes one. Python sends
the page's body as Recur sent it, undecoded (the script decodes it and checks the fields it
compares), and gets back only what it must act on: counts, the unknown and email-mismatched ids
(for the samples), the drifted users with their ledger values and times, and how many customers
each field was compared for. A field a customer's answer leaves out is unknown, never drift:
Recur's documented answers carry no `metadata` at all, and null (a value) is not absent.
The same script merges those back into the pending store (`PendingStore.restore`'s Lua, shared),
adds the page's ids to the run's seen set and writes the previous page's checkpoint and progress
(a `Record`): that page's repairs were done by its own script, so a checkpoint never covers a
page whose repairs are not enqueued yet.

`drift.compare_page` stays the reference; a property test holds the two to the same results.
Where Lua cannot match Python exactly (all unlikely in user metadata and documented here):
- email case is folded ASCII-only (`string.lower`), not with Unicode `str.casefold`;
- cjson decodes `[]` and `{}` alike, so an empty list and an empty object compare equal;
- JSON `true`/`false` differ from `1`/`0` (Python's `True == 1` says equal);
- numbers are doubles: integers beyond 2**53 may compare equal to their neighbours.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import redis
from redis.exceptions import ResponseError

from sync_worker import lua
from sync_worker import redis_keys as keys
from sync_worker.pipeline.records import FieldState
from sync_worker.reconcile.drift import Counts, Drift
from sync_worker.recur.errors import RecurError

_PAGE = lua.script(
    "pipeline/ledger_fn.lua", "pipeline/pending_fn_restore.lua", "reconcile/page_script.lua"
)

_Reply = tuple[
    int,
    int,
    list[bytes | str],
    list[bytes | str],
    list[tuple[bytes | str, int, *tuple[bytes | str, ...]]],
    int,
    int,
    list[tuple[bytes | str, int]],
]
"""The script's answer: customers on the page, those with an external id, unknown ids,
email-mismatch ids, drifted users ({id, fields merged, (field, value, time)...}), the
customers whose name, then metadata, was compared, and the bindable users ({id, merged})."""


_NO_CUSTOMERS = b'{"data": []}'


class MalformedPage(RecurError):
    """A 2xx page whose customers are not the documented shape in the fields compared."""


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


@dataclass(frozen=True)
class Record:
    """What a finished page leaves: the checkpoint's fields (None in a dry run), the progress."""

    checkpoint: list[str] | None
    progress: dict[str, Any]

    def args(self) -> list[str]:
        """The script's arguments from the seventh on."""
        return [json.dumps(self.progress), *(self.checkpoint or [])]


class PageScript:
    """Compares pages with the ledger in Redis, repairs drift, records ids seen and checkpoints."""

    def __init__(
        self,
        client: redis.Redis,
        *,
        seen_ttl: int,
        clock: Callable[[], float] = time.time,
        bind_by_email: bool = True,
    ) -> None:
        self._script = client.register_script(_PAGE)
        self._seen_ttl = seen_ttl
        self._clock = clock
        self._bind = bind_by_email

    def save(self, record: Record, *, seen: str) -> None:
        """Write a checkpoint and progress alone (the pass's start and its last page)."""
        self._script(keys=self._keys(seen), args=self._args(_NO_CUSTOMERS, record, repair=False))

    def compare(
        self, body: bytes, counts: Counts, *, seen: str, record: Record | None, repair: bool = True
    ) -> dict[str, Drift]:
        """What `drift.compare_page` returns and counts for a page's body; its ids go into `seen`.

        Each drifted user's ledger state is merged back into the pending store, due now, in
        the same script (`PendingStore.restore`, counted as enqueued, or left to a newer pending
        update); with `repair` false (a dry run) only counted. So is each bindable user's
        (`drift.bindable`: a customer without an external id whose email the ledger knows, when
        binding by email is on), which the sync path then binds. `record` (the previous page's) is
        written first. A body whose compared fields are not the documented types raises
        `MalformedPage`, and nothing is written.
        """
        try:
            reply = self._script(keys=self._keys(seen), args=self._args(body, record, repair))
        except ResponseError as error:
            if not str(error).startswith("MALFORMED "):
                raise
            why = str(error).removeprefix("MALFORMED ")
            raise MalformedPage(
                f"GET /v1/customers -> 2xx with a page that is not the documented shape: {why}",
                method="GET",
                path="/v1/customers",
            ) from error
        scanned, compared, unknown, emails, changed, names, metadatas, binds = cast(_Reply, reply)
        counts.scanned += scanned
        counts.compared_name += names
        counts.compared_metadata += metadatas
        counts.without_external_id += scanned - compared
        for kind, users in (("unknown_to_ledger", unknown), ("email_mismatches", emails)):
            for user in users:
                counts.sample(kind, _text(user))
        counts.unknown_to_ledger += len(unknown)
        counts.email_mismatches += len(emails)
        drifted: dict[str, Drift] = {}
        for user, merged, *flat in changed:
            user_id = _text(user)
            drift = {
                _text(name): FieldState(value=json.loads(value), ts_ms=int(float(stamp)))
                for name, value, stamp in zip(flat[::3], flat[1::3], flat[2::3], strict=True)
            }
            counts.drifted_name += "name" in drift
            counts.drifted_metadata += "metadata" in drift
            counts.sample("drifted", user_id)
            if merged > 0:
                counts.enqueued += 1
            else:
                # A newer pending update (or one applied meanwhile) will set these fields.
                counts.left_to_pending += 1
            drifted[user_id] = drift
        counts.drifted += len(drifted)
        for user, merged in binds:
            counts.bindable_by_email += 1
            counts.sample("bindable_by_email", _text(user))
            if merged > 0:
                counts.enqueued += 1
            else:
                counts.left_to_pending += 1  # a newer pending update binds it when it is sent
        counts.in_sync += compared - len(unknown) - len(drifted)
        return drifted

    def _keys(self, seen: str) -> list[str]:
        return [
            seen,
            keys.RECONCILE_CHECKPOINT,
            keys.RECONCILE_PROGRESS,
            keys.DUE,
            keys.INFLIGHT,
            keys.EMAIL_USERS,
        ]

    def _args(self, body: bytes, record: Record | None, repair: bool) -> list[bytes | str | int]:
        tail = record.args() if record is not None else [""]
        return [
            body,
            self._seen_ttl,
            keys.PENDING,
            repr(self._clock()),
            "1" if repair else "0",
            "1" if self._bind else "0",
            *tail,
        ]
