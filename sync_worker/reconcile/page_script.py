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

from sync_worker import redis_keys as keys
from sync_worker.pipeline.pending import RESTORE_FUNCTION, FieldState
from sync_worker.reconcile.drift import Counts, Drift
from sync_worker.recur.errors import RecurError

_PAGE = (
    RESTORE_FUNCTION
    + """
-- KEYS: seen, checkpoint, progress, due, inflight, email-users. ARGV: the page's body as Recur
-- sent it ({"data": [customer, ...], ...}), ledger prefix, seen TTL, pending prefix, now, '1' to
-- repair or '0' (a dry run: count what would merge), '1' to bind by email or '0', progress JSON
-- ('' for none), checkpoint items (none in a dry run). Returns {customers, customers with an
-- external id, unknown ids, email-mismatch ids, drifted users, customers whose name was
-- compared, same for metadata, bindable users}; a drifted user is {id, fields merged, (field,
-- ledger v:, ledger t:)...} for name then metadata, the fields as in drift.compare_page; a
-- bindable user (drift.bindable) is {id, fields merged}. A field absent from the answer is not
-- compared. A page whose compared fields are not the documented types is refused (an error
-- reply starting MALFORMED) before anything is written.
local null, decode = cjson.null, cjson.decode
local repair, bind = ARGV[6] == '1', ARGV[7] == '1'

local function malformed(why)
  return redis.error_reply('MALFORMED ' .. why)
end

-- Absent or null, or of the type wanted.
local function optional(v, wanted)
  return v == nil or v == null or type(v) == wanted
end

local decoded, page = pcall(decode, ARGV[1])
if not decoded or type(page) ~= 'table' or type(page.data) ~= 'table' then
  return malformed('the page is not a JSON object with a data list')
end
local rows, unbound = {}, {}
for i, c in ipairs(page.data) do
  if type(c) ~= 'table' or type(c.email) ~= 'string' or not optional(c.name, 'string')
     or not optional(c.metadata, 'table') or not optional(c.external_id, 'string') then
    return malformed('customer ' .. i .. ': email, name, metadata or external_id')
  end
  local user = c.external_id
  if user ~= nil and user ~= null and user ~= '' then
    -- nil (absent: unknown, not compared) stays apart from null (a value), as `in` does in Python.
    rows[#rows + 1] = {user, c.name, c.metadata, c.email}
  elseif bind then
    -- No external id (Checkout made it): the user whose email it is, if intake or import saw it.
    local found = redis.call('HGET', KEYS[6], string.lower(c.email))
    if found then unbound[#unbound + 1] = {found, c.email} end
  end
end

if ARGV[8] ~= '' then
  if #ARGV > 8 then redis.call('HSET', KEYS[2], unpack(ARGV, 9)) end
  redis.call('SET', KEYS[3], ARGV[8])
end

-- Deep equality of decoded JSON (tables compared key by key, both ways).
local function same(a, b)
  if a == b then return true end
  if type(a) ~= 'table' or type(b) ~= 'table' then return false end
  for k, v in pairs(a) do
    if not same(v, b[k]) then return false end
  end
  for k in pairs(b) do
    if a[k] == nil then return false end
  end
  return true
end

-- Python's falsiness, which `metadata or {}` relies on: all of these mean "no metadata".
local function blank(v)
  return v == null or v == false or v == 0 or v == ''
    or (type(v) == 'table' and next(v) == nil)
end

local ids, unknown, emails, drifted = {}, {}, {}, {}
local compared_name, compared_metadata = 0, 0
for i, row in ipairs(rows) do
  local user = row[1]
  ids[i] = user
  local key = ARGV[2] .. user
  -- A field counts only with both its value and its time, as in ledger.entry_from_hash.
  local h = redis.call('HMGET', key,
    'v:name', 't:name', 'v:metadata', 't:metadata', 'v:email', 't:email')
  if not (h[1] or h[2] or h[3] or h[4] or h[5] or h[6])
     and redis.call('EXISTS', key) == 0 then
    unknown[#unknown + 1] = user
  else
    if h[5] and h[6] then
      -- string.lower is ASCII-only: a mismatch in non-ASCII case is reported (never repaired).
      local want = decode(h[5])
      if type(want) ~= 'string' or string.lower(want) ~= string.lower(row[4]) then
        emails[#emails + 1] = user
      end
    end
    local out, fields = {user, 0}, {}
    if h[1] and h[2] and row[2] ~= nil then
      compared_name = compared_name + 1
      if not same(decode(h[1]), row[2]) then
        out[#out + 1] = 'name'
        out[#out + 1] = h[1]
        out[#out + 1] = h[2]
        fields.name = {h[1], tonumber(h[2])}
      end
    end
    if h[3] and h[4] and row[3] ~= nil then
      compared_metadata = compared_metadata + 1
      local want, have = decode(h[3]), row[3]
      local differs
      if blank(want) or blank(have) then
        differs = blank(want) ~= blank(have)
      else
        differs = not same(want, have)
      end
      if differs then
        out[#out + 1] = 'metadata'
        out[#out + 1] = h[3]
        out[#out + 1] = h[4]
        fields.metadata = {h[3], tonumber(h[4])}
      end
    end
    if #out > 2 then
      out[2] = restore(ARGV[4] .. user, key, KEYS[4], KEYS[5], user, ARGV[5], fields, '', repair)
      drifted[#drifted + 1] = out
    end
  end
end
-- A bindable user's ledger fields go back to the pending store, due now: the sync path's 404
-- by external id then binds the customer by email (sync.py). Only when the ledger's email is
-- the customer's exactly (that lookup is exact), the user was not moved to another external id
-- by us, and there is something to send.
local binds = {}
for _, pair in ipairs(unbound) do
  local user = pair[1]
  local key = ARGV[2] .. user
  local h = redis.call('HMGET', key,
    'v:name', 't:name', 'v:metadata', 't:metadata', 'v:email', 't:email', 'v:external_id')
  local email = h[5] and h[6] and decode(h[5])
  local moved = h[7] and decode(h[7]) ~= user
  if type(email) == 'string' and email == pair[2] and not moved
     and ((h[1] and h[2]) or (h[3] and h[4])) then
    local fields = {email = {h[5], tonumber(h[6])}}
    if h[1] and h[2] then fields.name = {h[1], tonumber(h[2])} end
    if h[3] and h[4] then fields.metadata = {h[3], tonumber(h[4])} end
    local merged = restore(ARGV[4] .. user, key, KEYS[4], KEYS[5], user, ARGV[5], fields, '',
                           repair)
    binds[#binds + 1] = {user, merged}
    ids[#ids + 1] = user  -- in Recur, unbound: not missing
  end
end
if #ids > 0 then
  redis.call('SADD', KEYS[1], unpack(ids))
  redis.call('EXPIRE', KEYS[1], ARGV[3])
end
return {#page.data, #rows, unknown, emails, drifted, compared_name, compared_metadata, binds}
"""
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
        """The script's arguments from the eighth on."""
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
            keys.LEDGER,
            self._seen_ttl,
            keys.PENDING,
            repr(self._clock()),
            "1" if repair else "0",
            "1" if self._bind else "0",
            *tail,
        ]
