"""The pending store: every accepted change not yet applied, the debounce, and the stale guard.

This, not the Celery queue, is the source of truth for work to do. Celery messages only carry
claims; a lost message or a killed worker costs a lease, after which the sweeper offers the
user again.

Layout (keys in redis_keys.py):
- `pending:{user}` hash: `v:{field}` the desired value (JSON), `t:{field}` its event time (ms),
  `e:{field}` the event that set it; `version`, `first_seen`, `due`, `attempts`, `retry_since`,
  `last_error` (JSON), `replay_of` (JSON list of dead-letter ids being replayed).
- `pending-events:{user}` list: the event ids the pending change covers (last 100).
- `due` zset: user -> when to send. `inflight` zset: user -> when its claim lapses.
  A user is in at most one of them.
- `lease:{user}`: the token of the one claim allowed to send for that user.
- `fence:{user}` hash: `until` when a PATCH whose outcome was ambiguous may still land, and
  `m:{field}` the mark ([event time, event id]) of each field it carried (see `fence`); the
  pending hash's `verify` (resends so far) asks for a read-back once it has passed.
- the user's ledger entry, a field of `ledger-bucket:{n}`: what Recur has applied, read and
  written through `pipeline/ledger_fn.lua` (see ledger.py).
- `trace:{user}` list: the accept script adds each event's outcome to it (see trace.py).

Every transition is one Lua script (the `pending_*.lua` files beside this module), so that a
crash between two writes cannot leave a user half-moved, and two workers can never both hold a
user. A field is merged only when its event time is at least the pending one and the applied
one: an event older than what was already applied changes nothing, across retries, replays and
workers.
"""

from __future__ import annotations

import json
import math
import secrets
import time
from collections.abc import Callable
from typing import Any, cast

import redis

from sync_worker import lua
from sync_worker import redis_keys as keys
from sync_worker.intake.events import UserEvent
from sync_worker.pipeline.records import (
    AcceptResult,
    Claim,
    FieldState,
    Snapshot,
    Verified,
    as_text,
    dumps,
    snapshot_from,
)
from sync_worker.telemetry import trace

EVENTS_KEPT = 100
REBOUND_TTL_SECONDS = 30 * 24 * 3600
"""How long a rebind's forward pointer is kept by default: as long as dead letters are."""
PENDING_EVENTS = keys.PREFIX + "pending-events:"

# ledger_fn.lua comes first in every script that reads or writes the ledger (ledger.py).
_ACCEPT = lua.script("pipeline/ledger_fn.lua", "pipeline/pending_accept.lua")
_CLAIM = lua.script("pipeline/pending_claim.lua")
_SNAPSHOT = lua.script("pipeline/pending_snapshot.lua")
_RENEW = lua.script("pipeline/pending_renew.lua")

# pending_fn_settle.lua is the shared tail of the scripts that finish a claim: drop the fields
# that were sent (unless a newer event replaced them meanwhile), release the claim, and offer the
# user again if anything is left. Only the replays this claim carried (`resolved`) are over: one
# restored while it was in flight stays in `replay_of`, so the send that carries it still deletes
# its dead letter. With `verify_delay`, a change whose sends had an ambiguous outcome is kept for
# a read-back once the fence (see `fence`) has passed, even when no field is left.
_APPLIED = lua.script(
    "pipeline/ledger_fn.lua",
    "pipeline/pending_fn_settle.lua",
    "pipeline/pending_fn_rebind.lua",
    "pipeline/pending_applied.lua",
)
_DEAD = lua.script("pipeline/pending_fn_settle.lua", "pipeline/pending_dead.lua")
_HAND_BACK = lua.script("pipeline/pending_hand_back.lua")
_REQUEUE_EXPIRED = lua.script("pipeline/pending_requeue_expired.lua")
# pending_fn_restore.lua is shared by `PendingStore.restore` and the reconciliation's page script
# (reconcile/page_script.py).
_RESTORE = lua.script(
    "pipeline/ledger_fn.lua", "pipeline/pending_fn_restore.lua", "pipeline/pending_restore.lua"
)
_REBIND = lua.script(
    "pipeline/ledger_fn.lua", "pipeline/pending_fn_rebind.lua", "pipeline/pending_rebind.lua"
)
_FENCE = lua.script("pipeline/pending_fence.lua")
_VERIFIED = lua.script("pipeline/ledger_fn.lua", "pipeline/pending_verified.lua")


ACCEPT_SCRIPT = _ACCEPT
"""The accept script, for callers with an asyncio Redis client (the web intake)."""


class PendingStore:
    """Accept, claim, settle and re-offer per-user pending changes in Redis."""

    def __init__(
        self,
        client: redis.Redis,
        *,
        window_seconds: float,
        max_wait_seconds: float,
        dedup_ttl_seconds: int,
        lease_seconds: float,
        trace_retention_seconds: float = trace.DEFAULT_RETENTION_SECONDS,
        verify_delay_seconds: float = 5.0,
        rebound_ttl_seconds: float = REBOUND_TTL_SECONDS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._redis = client
        self._trace_ttl = int(trace_retention_seconds)
        self._verify_delay = verify_delay_seconds
        self._rebound_ttl = max(1, int(rebound_ttl_seconds))
        self._window = window_seconds
        self._max_wait = max_wait_seconds
        self._dedup_ttl = dedup_ttl_seconds
        self._lease = lease_seconds
        self._clock = clock
        self._accept = client.register_script(_ACCEPT)
        self._claim = client.register_script(_CLAIM)
        self._snapshot = client.register_script(_SNAPSHOT)
        self._renew = client.register_script(_RENEW)
        self._applied = client.register_script(_APPLIED)
        self._dead = client.register_script(_DEAD)
        self._hand_back = client.register_script(_HAND_BACK)
        self._requeue = client.register_script(_REQUEUE_EXPIRED)
        self._restore = client.register_script(_RESTORE)
        self._rebind = client.register_script(_REBIND)
        self._fence = client.register_script(_FENCE)
        self._verified = client.register_script(_VERIFIED)

    def accept_call(self, event: UserEvent) -> tuple[list[str], list[Any]]:
        """The keys and arguments of the accept script for an event (sync and async callers)."""
        user = event.user_id
        args: list[Any] = [
            event.event_id,
            user,
            repr(self._clock()),
            self._window,
            self._max_wait,
            self._dedup_ttl,
            event.ts_ms,
            EVENTS_KEPT,
            trace.MAX_ENTRIES,
            self._trace_ttl,
            event.type,
        ]
        for name, value in event.fields.items():
            args += [name, dumps(value)]
        script_keys = [
            keys.event_seen(event.event_id),
            keys.pending(user),
            keys.ledger(user),
            keys.DUE,
            keys.INFLIGHT,
            PENDING_EVENTS + user,
            keys.trace(user),
            keys.EMAIL_USERS,
        ]
        return script_keys, args

    def accept(self, event: UserEvent) -> AcceptResult:
        """Record an event durably: dedup by id, merge its fields, (re)schedule the user."""
        script_keys, args = self.accept_call(event)
        return AcceptResult.from_reply(self._accept(keys=script_keys, args=args))

    def claim_due(self, limit: int) -> list[Claim]:
        """Take up to `limit` users whose time has come; each gets a lease and a token."""
        now = self._clock()
        flat = cast(
            list[bytes | str],
            self._claim(
                keys=[keys.DUE, keys.INFLIGHT],
                args=[repr(now), repr(now + self._lease), limit, secrets.token_hex(8), keys.LEASE],
            ),
        )
        texts = [as_text(item) for item in flat]
        return [Claim(user_id=u, token=t) for u, t in zip(texts[::2], texts[1::2], strict=True)]

    def attempts_of(self, user_ids: list[str]) -> list[int]:
        """How many failed rounds each user's pending change has had, in one round trip."""
        pipe = self._redis.pipeline(transaction=False)
        for user_id in user_ids:
            pipe.hget(keys.pending(user_id), "attempts")
        return [int(value or 0) for value in pipe.execute()]

    def snapshot(self, claim: Claim) -> Snapshot | None:
        """Read the user's pending change under the claim; None if the claim was lost."""
        return self.snapshot_many([claim])[0]

    def snapshot_many(self, claims: list[Claim]) -> list[Snapshot | None]:
        """`snapshot` for a batch of claims in one round trip."""
        pipe = self._redis.pipeline(transaction=False)
        expiry = repr(self._clock() + self._lease)
        for claim in claims:
            self._snapshot(
                keys=[
                    keys.pending(claim.user_id),
                    keys.lease(claim.user_id),
                    keys.INFLIGHT,
                    PENDING_EVENTS + claim.user_id,
                    keys.fence(claim.user_id),
                ],
                args=[claim.user_id, claim.token, expiry],
                client=pipe,
            )
        return [
            self._decode_snapshot(claim, reply)
            for claim, reply in zip(claims, pipe.execute(), strict=True)
        ]

    def _decode_snapshot(self, claim: Claim, result: Any) -> Snapshot | None:
        if result is None:
            return None
        if not result:
            return Snapshot(claim.user_id, {}, 0, 0, 0.0, None)
        flat, event_ids, fence = cast(list[list[bytes | str]], result)
        return snapshot_from(
            claim.user_id,
            [as_text(b) for b in flat],
            [as_text(b) for b in event_ids],
            [as_text(b) for b in fence],
        )

    def renew(self, claim: Claim) -> bool:
        """Extend the lease; False if it was lost (another worker may now own the user)."""
        renewed = self._renew(
            keys=[keys.lease(claim.user_id), keys.INFLIGHT],
            args=[claim.user_id, claim.token, repr(self._clock() + self._lease)],
        )
        return bool(renewed)

    def renew_many(self, claims: list[Claim]) -> list[bool]:
        """`renew` for several claims in one round trip."""
        pipe = self._redis.pipeline(transaction=False)
        expiry = repr(self._clock() + self._lease)
        for claim in claims:
            self._renew(
                keys=[keys.lease(claim.user_id), keys.INFLIGHT],
                args=[claim.user_id, claim.token, expiry],
                client=pipe,
            )
        return [bool(renewed) for renewed in pipe.execute()]

    def mark_applied(self, claim: Claim, snapshot: Snapshot) -> str:
        """Record a success in the ledger and settle: 'more' if newer changes wait, 'verify' if
        Recur is to be read back first (after an ambiguous outcome), else 'done'.

        A snapshot that sets `external_id` to another id rebinds in the same step (see `rebind`)."""
        return self.mark_applied_many([(claim, snapshot)])[0]

    def mark_applied_many(self, applied: list[tuple[Claim, Snapshot]]) -> list[str]:
        """`mark_applied` for a batch in one round trip."""
        pipe = self._redis.pipeline(transaction=False)
        for claim, snapshot in applied:
            self._mark_applied(claim, snapshot, pipe)
        return [as_text(cast(bytes | str, reply)) for reply in pipe.execute()]

    def _mark_applied(self, claim: Claim, snapshot: Snapshot, pipe: Any) -> None:
        user = claim.user_id
        values = {name: dumps(state.value) for name, state in snapshot.fields.items()}
        moved_to = snapshot.fields.get("external_id")
        new_user = moved_to.value if moved_to is not None else None
        if not isinstance(new_user, str) or new_user == user:
            new_user = ""
        self._applied(
            keys=[
                *_claim_keys(user),
                keys.ledger(user),
                keys.DEAD_LETTERS,
                keys.fence(user),
                *self._rebind_keys(user, new_user),
            ],
            args=[
                user,
                claim.token,
                repr(self._clock()),
                json.dumps(snapshot.sent_marks()),
                json.dumps(values),
                len(snapshot.event_ids),
                json.dumps(snapshot.replay_of),
                keys.DEAD_LETTER,
                self._verify_delay,
                new_user,
                EVENTS_KEPT,
                self._rebound_ttl,
            ],
            client=pipe,
        )

    @staticmethod
    def _rebind_keys(user: str, new_user: str) -> list[str]:
        """The keys a rebind of `user` to `new_user` also writes (none without a rebind)."""
        if not new_user:
            return []
        return [
            keys.ledger(new_user),
            keys.pending(new_user),
            PENDING_EVENTS + new_user,
            keys.fence(new_user),
            keys.rebound(user),
            keys.rebound(new_user),
        ]

    def dead_letter(
        self,
        claim: Claim,
        snapshot: Snapshot,
        *,
        new_id: str,
        common: dict[str, str],
        created: dict[str, str],
    ) -> tuple[str, str]:
        """Move the snapshot into the dead-letter queue atomically.

        Entries being replayed are updated in place (their replay count goes up); otherwise a new
        entry `new_id` is written. Returns (id written or '', 'more'|'done').
        """
        user = claim.user_id
        written, state = cast(
            list[bytes | str],
            self._dead(
                keys=[
                    *_claim_keys(user),
                    keys.DEAD_LETTERS,
                ],
                args=[
                    user,
                    claim.token,
                    repr(self._clock()),
                    json.dumps(snapshot.sent_marks()),
                    len(snapshot.event_ids),
                    json.dumps(snapshot.replay_of),
                    new_id,
                    keys.DEAD_LETTER,
                    json.dumps(common),
                    json.dumps(created),
                ],
            ),
        )
        return as_text(written), as_text(state)

    def hand_back(
        self, claim: Claim, *, delay: float, error: dict[str, Any] | None
    ) -> tuple[int, float] | None:
        """Release the claim and offer the user again in `delay` seconds.

        With an `error`, the failed round counts against the retry budget; returns
        (attempts, retry_since), or None if the claim was already lost.
        """
        now = self._clock()
        result = self._hand_back(
            keys=[keys.pending(claim.user_id), keys.lease(claim.user_id), keys.INFLIGHT, keys.DUE],
            args=[
                claim.user_id,
                claim.token,
                repr(now),
                repr(now + delay),
                dumps(error) if error else "",
                "1" if error else "0",
            ],
        )
        if result is None:
            return None
        attempts, since = cast(list[Any], result)
        return int(attempts), float(since)

    def requeue_expired(self, limit: int = 1000) -> int:
        """Offer again every user whose claim lapsed (worker killed, message lost)."""
        count = self._requeue(
            keys=[keys.INFLIGHT, keys.DUE],
            args=[repr(self._clock()), keys.LEASE, keys.PENDING, limit],
        )
        return int(cast(int, count))

    def restore(self, user_id: str, fields: dict[str, FieldState], *, replay_of: str = "") -> int:
        """Merge fields back into the pending store (replay, repair), due now.

        Returns how many fields were at least as new as both the applied and the pending state,
        or -1 when `replay_of` names a dead letter whose replay is already under way.
        """
        payload = {name: [dumps(state.value), state.ts_ms] for name, state in fields.items()}
        merged = self._restore(
            keys=[keys.pending(user_id), keys.ledger(user_id), keys.DUE, keys.INFLIGHT],
            args=[user_id, repr(self._clock()), json.dumps(payload), replay_of],
        )
        return int(cast(int, merged))

    def depths(self) -> dict[str, int]:
        """Users waiting (due now or later) and users being sent now."""
        pipe = self._redis.pipeline(transaction=False)
        pipe.zcard(keys.DUE)
        pipe.zcount(keys.DUE, "-inf", repr(self._clock()))
        pipe.zcard(keys.INFLIGHT)
        waiting, due_now, inflight = pipe.execute()
        return {"pending": int(waiting), "due_now": int(due_now), "inflight": int(inflight)}

    def rebind(self, old_user: str, new_user: str) -> bool:
        """Move the ledger (and any change still pending) from `old_user` to `new_user`, after
        Recur accepted the new external id. True if a pending change moved too.

        A pending field older than the one `new_user` already has applied is not moved, and the
        old user's event list goes with its change. `mark_applied` does this itself for a
        snapshot that rebinds; this is for callers that learn of a rebind another way."""
        moved = self._rebind(
            keys=[
                keys.ledger(old_user),
                keys.ledger(new_user),
                keys.pending(old_user),
                keys.pending(new_user),
                keys.DUE,
                keys.INFLIGHT,
                PENDING_EVENTS + old_user,
                PENDING_EVENTS + new_user,
                keys.fence(old_user),
                keys.fence(new_user),
                keys.rebound(old_user),
                keys.rebound(new_user),
            ],
            args=[old_user, new_user, repr(self._clock()), EVENTS_KEPT, self._rebound_ttl],
        )
        return bool(moved)

    def current_id(self, user_id: str) -> str:
        """The external id the customer of `user_id` has now, following its rebinds."""
        seen = {user_id}
        while (moved := self._redis.get(keys.rebound(user_id))) is not None:
            user_id = as_text(moved)
            if user_id in seen:  # cannot happen (a rebind clears its target); never spin
                break
            seen.add(user_id)
        return user_id

    def fence(self, snapshot: Snapshot, until: float) -> None:
        """Record that the PATCH of `snapshot` ended ambiguously: it may still land until `until`.

        Recur has no conditional update, so nothing that would undo one of its fields may be
        sent before then (`Snapshot.held_by_fence`), and once the change is through Recur is
        read back (`verify`)."""
        ttl_ms = max(1, math.ceil((until - self._clock()) * 1000))
        user = snapshot.user_id
        self._fence(
            keys=[keys.fence(user), keys.pending(user)],
            args=[repr(until), ttl_ms, json.dumps(snapshot.sent_marks())],
        )

    def verified(
        self, claim: Claim, observed: dict[str, Any], *, max_resends: int
    ) -> Verified | None:
        """Settle a read-back: `observed` is what Recur holds of the fields it returns.

        A field that differs from the ledger is queued again (at most `max_resends` times in a
        row); None if the claim was lost."""
        user = claim.user_id
        result = self._verified(
            keys=[
                *_claim_keys(user),
                keys.ledger(user),
            ],
            args=[
                user,
                claim.token,
                repr(self._clock()),
                json.dumps({name: dumps(value) for name, value in observed.items()}),
                max_resends,
            ],
        )
        if result is None:
            return None
        state, differ, resent = cast(list[Any], result)
        return Verified(state=as_text(state), differ=int(differ), resent=bool(int(resent)))


def _claim_keys(user: str) -> list[str]:
    """The keys every script settling a claimed user starts with, in the order they expect."""
    return [keys.pending(user), keys.lease(user), keys.INFLIGHT, keys.DUE, PENDING_EVENTS + user]
