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
- `ledger:{user}` hash: `v:{field}`, `t:{field}` of what Recur has applied (see ledger.py).
- `trace:{user}` list: the accept script adds each event's outcome to it (see trace.py).

Every transition is one Lua script, so that a crash between two writes cannot leave a user
half-moved, and two workers can never both hold a user. A field is merged only when its event
time is at least the pending one and the applied one: an event older than what was already
applied changes nothing, across retries, replays and workers.
"""

from __future__ import annotations

import json
import math
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

import redis

from sync_worker import redis_keys as keys
from sync_worker.intake.events import UserEvent
from sync_worker.telemetry import trace

EVENTS_KEPT = 100
REBOUND_TTL_SECONDS = 30 * 24 * 3600
"""How long a rebind's forward pointer is kept by default: as long as dead letters are."""
PENDING_EVENTS = keys.PREFIX + "pending-events:"

_ACCEPT = """
-- KEYS: event_seen, pending, ledger, due, inflight, events, trace, email-users
-- ARGV: event_id, user, now, window, max_wait, dedup_ttl, ts, events_kept,
--       trace_max, trace_ttl, event_type, (field, value)...
local names, merged = {}, {}
-- The user's trace (trace.py) gets one `event` entry whatever the outcome.
local function trace(outcome, due)
  local d = {kind = 'event', at = tonumber(ARGV[3]), id = ARGV[1], type = ARGV[11],
             ts = tonumber(ARGV[7]), outcome = outcome, due = due}
  -- cjson writes an empty table as {}: leave empty lists out, and `merged` when it is all.
  if #names > 0 then d.fields = names end
  if #merged > 0 and #merged < #names then d.merged = merged end
  if redis.call('LPUSH', KEYS[7], cjson.encode(d)) > tonumber(ARGV[9]) then
    redis.call('LTRIM', KEYS[7], 0, tonumber(ARGV[9]) - 1)
  end
  redis.call('EXPIRE', KEYS[7], ARGV[10])
end
for i = 12, #ARGV, 2 do names[#names + 1] = ARGV[i] end
if not redis.call('SET', KEYS[1], ARGV[2], 'NX', 'EX', ARGV[6]) then
  trace('duplicate')
  return {0, 0}
end
local ts = tonumber(ARGV[7])
local changed = 0
for i = 12, #ARGV, 2 do
  local f = ARGV[i]
  local applied = tonumber(redis.call('HGET', KEYS[3], 't:' .. f))
  local pending = tonumber(redis.call('HGET', KEYS[2], 't:' .. f))
  if (applied == nil or ts >= applied) and (pending == nil or ts >= pending) then
    redis.call('HSET', KEYS[2], 'v:' .. f, ARGV[i + 1], 't:' .. f, ARGV[7], 'e:' .. f, ARGV[1])
    -- The newest email finds the user of a customer Checkout made without an external id.
    local email = f == 'email' and cjson.decode(ARGV[i + 1])
    if type(email) == 'string' then redis.call('HSET', KEYS[8], string.lower(email), ARGV[2]) end
    merged[#merged + 1] = f
    changed = 1
  end
end
if changed == 0 then
  trace('stale')
  return {1, 0}
end
redis.call('RPUSH', KEYS[6], ARGV[1])
redis.call('LTRIM', KEYS[6], -tonumber(ARGV[8]), -1)
local version = redis.call('HINCRBY', KEYS[2], 'version', 1)
local now = tonumber(ARGV[3])
local first = tonumber(redis.call('HGET', KEYS[2], 'first_seen'))
if first == nil then
  first = now
  redis.call('HSET', KEYS[2], 'first_seen', ARGV[3])
end
local due = math.min(now + tonumber(ARGV[4]), first + tonumber(ARGV[5]))
redis.call('HSET', KEYS[2], 'due', tostring(due))
if not redis.call('ZSCORE', KEYS[5], ARGV[2]) then
  if tonumber(redis.call('HGET', KEYS[2], 'attempts') or '0') > 0 then
    redis.call('ZADD', KEYS[4], 'NX', due, ARGV[2])
  else
    redis.call('ZADD', KEYS[4], due, ARGV[2])
  end
end
trace('merged', due)
return {1, version}
"""

_CLAIM = """
-- KEYS: due, inflight. ARGV: now, lease_expiry, limit, token_prefix, lease_prefix
local users = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
local out = {}
for i, u in ipairs(users) do
  redis.call('ZREM', KEYS[1], u)
  redis.call('ZADD', KEYS[2], ARGV[2], u)
  local token = ARGV[4] .. ':' .. i
  redis.call('SET', ARGV[5] .. u, token)
  out[#out + 1] = u
  out[#out + 1] = token
end
return out
"""

_SNAPSHOT = """
-- KEYS: pending, lease, inflight, events, fence. ARGV: user, token, lease_expiry
if redis.call('GET', KEYS[2]) ~= ARGV[2] then return false end
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('ZREM', KEYS[3], ARGV[1])
  redis.call('DEL', KEYS[2])
  return {}
end
redis.call('ZADD', KEYS[3], 'XX', ARGV[3], ARGV[1])
return {redis.call('HGETALL', KEYS[1]), redis.call('LRANGE', KEYS[4], 0, -1),
        redis.call('HGETALL', KEYS[5])}
"""

_RENEW = """
-- KEYS: lease, inflight. ARGV: user, token, lease_expiry
if redis.call('GET', KEYS[1]) ~= ARGV[2] then return 0 end
redis.call('ZADD', KEYS[2], 'XX', ARGV[3], ARGV[1])
return 1
"""

# Shared tail of the scripts that finish a claim: drop the fields that were sent (unless a newer
# event replaced them meanwhile), release the claim, and offer the user again if anything is left.
# Only the replays this claim carried (`resolved`) are over: one restored while it was in flight
# stays in `replay_of`, so the send that carries it still deletes its dead letter. With
# `verify_delay`, a change whose sends had an ambiguous outcome is kept for a read-back once the
# fence (see `fence`) has passed, even when no field is left.
_SETTLE = """
local function settle(pending, lease, inflight, due, events, user, token, now, sent, n_events,
                      resolved, fence, verify_delay)
  for f, mark in pairs(sent) do
    local now_ts = tonumber(redis.call('HGET', pending, 't:' .. f))
    if now_ts == mark[1] and redis.call('HGET', pending, 'e:' .. f) == mark[2] then
      redis.call('HDEL', pending, 'v:' .. f, 't:' .. f, 'e:' .. f)
    end
  end
  local owned = redis.call('GET', lease) == token
  if owned then
    redis.call('ZREM', inflight, user)
    redis.call('DEL', lease)
  end
  local over = {}
  for _, id in ipairs(resolved) do over[id] = true end
  local left = {}
  for _, id in ipairs(cjson.decode(redis.call('HGET', pending, 'replay_of') or '[]')) do
    if not over[id] then left[#left + 1] = id end
  end
  if #left > 0 then
    redis.call('HSET', pending, 'replay_of', cjson.encode(left))
  else
    redis.call('HDEL', pending, 'replay_of')
  end
  local state = nil
  for _, k in ipairs(redis.call('HKEYS', pending)) do
    if string.sub(k, 1, 2) == 't:' then
      state = 'more'
      break
    end
  end
  if state == nil and verify_delay ~= nil and redis.call('HEXISTS', pending, 'verify') == 1 then
    state = 'verify'
  end
  if state == nil then
    redis.call('DEL', pending, events)
    return 'done'
  end
  redis.call('HSET', pending, 'attempts', 0, 'first_seen', now)
  redis.call('HDEL', pending, 'retry_since', 'last_error')
  redis.call('LTRIM', events, n_events, -1)
  if owned then
    local at = tonumber(redis.call('HGET', pending, 'due') or now)
    if state == 'verify' then
      at = tonumber(now) + verify_delay
      local fenced = tonumber(redis.call('HGET', fence, 'until'))
      if fenced ~= nil and fenced + verify_delay > at then at = fenced + verify_delay end
      redis.call('HSET', pending, 'due', string.format('%.3f', at))
    end
    redis.call('ZADD', due, at, user)
  end
  return state
end
"""

_REBIND_FUNCTION = """
-- After Recur moved a customer from one external id to another, move what we know with it.
local function merge_fields(from, to, floor)
  -- Copy each field of `from` at least as new as the one in `to` and, given a `floor` (the new
  -- user's ledger), as the one applied there: an older change would undo a newer applied one.
  local merged = 0
  local raw = redis.call('HGETALL', from)
  for i = 1, #raw, 2 do
    local k = raw[i]
    if string.sub(k, 1, 2) == 't:' and k ~= 't:external_id' then
      local f = string.sub(k, 3)
      local ts = tonumber(raw[i + 1])
      local current = tonumber(redis.call('HGET', to, k))
      local applied = nil
      if floor then applied = tonumber(redis.call('HGET', floor, k)) end
      if (current == nil or ts >= current) and (applied == nil or ts >= applied) then
        redis.call('HSET', to, 'v:' .. f, redis.call('HGET', from, 'v:' .. f), k, raw[i + 1])
        local e = redis.call('HGET', from, 'e:' .. f)
        if e then redis.call('HSET', to, 'e:' .. f, e) end
        merged = merged + 1
      end
    end
  end
  return merged
end

-- Drop the fields of a pending change older than the applied ones: after a rebind brought the
-- old id's ledger, the new id's change may hold a field that was accepted before it and is now
-- stale. Returns how many fields are left.
local function prune(pending, ledger)
  local left = 0
  local raw = redis.call('HGETALL', pending)
  for i = 1, #raw, 2 do
    local k = raw[i]
    if string.sub(k, 1, 2) == 't:' then
      local applied = tonumber(redis.call('HGET', ledger, k))
      if applied ~= nil and tonumber(raw[i + 1]) < applied then
        local f = string.sub(k, 3)
        redis.call('HDEL', pending, 'v:' .. f, k, 'e:' .. f)
      else
        left = left + 1
      end
    end
  end
  return left
end

-- keys: {old_ledger, new_ledger, index, old_pending, new_pending, due, inflight, old_events,
-- new_events, old_fence, new_fence, old_rebound, new_rebound}. Returns 1 when the old user's
-- pending change moved.
local function rebind(k, old_user, new_user, now, events_kept, rebound_ttl)
  merge_fields(k.old_ledger, k.new_ledger, nil)
  local applied_at = redis.call('HGET', k.old_ledger, 'applied_at')
  if applied_at then redis.call('HSET', k.new_ledger, 'applied_at', applied_at) end
  redis.call('DEL', k.old_ledger)
  redis.call('SREM', k.index, old_user)
  redis.call('SADD', k.index, new_user)
  -- A dead letter written under the old id is replayed to the customer's new one; the new id
  -- holds a customer now, so it points nowhere (a move back cannot make a loop).
  redis.call('SET', k.old_rebound, new_user, 'EX', rebound_ttl)
  redis.call('DEL', k.new_rebound)
  -- Also under a claim: one that has not read its snapshot yet then finds nothing stale (or
  -- nothing at all, and is released), and one that has cannot settle a stale field.
  if redis.call('EXISTS', k.new_pending) == 1 and prune(k.new_pending, k.new_ledger) == 0
     and redis.call('HEXISTS', k.new_pending, 'verify') == 0 then
    redis.call('DEL', k.new_pending, k.new_events)
    redis.call('ZREM', k.due, new_user)
  end
  -- A late PATCH to the old id lands on the same customer: its fence moves too.
  local fence_ms = redis.call('PTTL', k.old_fence)
  if fence_ms > 0 then
    local until_new = tonumber(redis.call('HGET', k.new_fence, 'until'))
    local old = redis.call('HGETALL', k.old_fence)
    for i = 1, #old, 2 do
      if old[i] ~= 'until' or until_new == nil or tonumber(old[i + 1]) > until_new then
        redis.call('HSET', k.new_fence, old[i], old[i + 1])
      end
    end
    if redis.call('PTTL', k.new_fence) < fence_ms then
      redis.call('PEXPIRE', k.new_fence, fence_ms)
    end
  end
  if redis.call('EXISTS', k.old_pending) == 0 or redis.call('ZSCORE', k.inflight, old_user) then
    return 0
  end
  if merge_fields(k.old_pending, k.new_pending, k.new_ledger) > 0 then
    local replaying = cjson.decode(redis.call('HGET', k.new_pending, 'replay_of') or '[]')
    for _, id in ipairs(cjson.decode(redis.call('HGET', k.old_pending, 'replay_of') or '[]')) do
      replaying[#replaying + 1] = id
    end
    if #replaying > 0 then
      redis.call('HSET', k.new_pending, 'replay_of', cjson.encode(replaying))
    end
    local ids = redis.call('LRANGE', k.old_events, 0, -1)
    if #ids > 0 then
      redis.call('RPUSH', k.new_events, unpack(ids))
      redis.call('LTRIM', k.new_events, -events_kept, -1)
    end
    redis.call('HINCRBY', k.new_pending, 'version', 1)
    redis.call('HSETNX', k.new_pending, 'first_seen', now)
    redis.call('HSETNX', k.new_pending, 'due', now)
    if not redis.call('ZSCORE', k.inflight, new_user) then
      redis.call('ZADD', k.due, 'NX', now, new_user)
    end
  end
  redis.call('DEL', k.old_pending, k.old_events)
  redis.call('ZREM', k.due, old_user)
  return 1
end
"""

_APPLIED = (
    _SETTLE
    + _REBIND_FUNCTION
    + """
-- KEYS: pending, lease, inflight, due, events, ledger, ledger_index, dlq_index, fence,
--       new ledger, new pending, new events, new fence, old rebound, new rebound (the last six
--       only with a new user)
-- ARGV: user, token, now, sent_json {field: [ts, event_id]}, values_json {field: value}, n_events,
--       resolved_json [dead letter ids], dlq_prefix, verify_delay, new user or '', events_kept,
--       rebound_ttl
local sent = cjson.decode(ARGV[4])
local values = cjson.decode(ARGV[5])
for f, mark in pairs(sent) do
  local ts = mark[1]
  local lt = tonumber(redis.call('HGET', KEYS[6], 't:' .. f))
  if lt == nil or ts >= lt then
    redis.call('HSET', KEYS[6], 'v:' .. f, values[f], 't:' .. f, string.format('%d', ts))
  end
end
redis.call('HSET', KEYS[6], 'applied_at', ARGV[3])
redis.call('SADD', KEYS[7], ARGV[1])
local resolved = cjson.decode(ARGV[7])
for _, id in ipairs(resolved) do
  redis.call('DEL', ARGV[8] .. id)
  redis.call('ZREM', KEYS[8], id)
end
-- A send that moved the customer off this external id (rebind, unbind) ends its read-back: a
-- read by this id would find nothing.
if sent['external_id'] ~= nil then redis.call('HDEL', KEYS[1], 'verify') end
local state = settle(KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], ARGV[1], ARGV[2], ARGV[3], sent,
                     tonumber(ARGV[6]), resolved, KEYS[9], tonumber(ARGV[9]))
-- A rebind moves the rest in the same step: no claim may send the old id's change in between.
if ARGV[10] ~= '' then
  local k = {old_ledger = KEYS[6], new_ledger = KEYS[10], index = KEYS[7], old_pending = KEYS[1],
             new_pending = KEYS[11], due = KEYS[4], inflight = KEYS[3], old_events = KEYS[5],
             new_events = KEYS[12], old_fence = KEYS[9], new_fence = KEYS[13],
             old_rebound = KEYS[14], new_rebound = KEYS[15]}
  if rebind(k, ARGV[1], ARGV[10], ARGV[3], tonumber(ARGV[11]), ARGV[12]) == 1 then
    state = 'done'
  end
end
return state
"""
)

_DEAD = (
    _SETTLE
    + """
-- KEYS: pending, lease, inflight, due, events, dlq_index
-- ARGV: user, token, now, sent_json, n_events, replay_of_json, new_id, dlq_prefix,
--       common_json {field: value}, created_json {field: value}
local common = cjson.decode(ARGV[9])
local function write(key, fields)
  for k, v in pairs(fields) do redis.call('HSET', key, k, v) end
end
local replayed = cjson.decode(ARGV[6])
local updated = 0
for _, id in ipairs(replayed) do
  local key = ARGV[8] .. id
  if redis.call('EXISTS', key) == 1 then
    write(key, common)
    redis.call('HINCRBY', key, 'replay_count', 1)
    redis.call('ZADD', KEYS[6], ARGV[3], id)
    updated = updated + 1
  end
end
local id = ''
if updated == 0 then
  id = ARGV[7]
  write(ARGV[8] .. id, common)
  write(ARGV[8] .. id, cjson.decode(ARGV[10]))
  redis.call('ZADD', KEYS[6], ARGV[3], id)
end
local state = settle(KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], ARGV[1], ARGV[2], ARGV[3],
                     cjson.decode(ARGV[4]), tonumber(ARGV[5]), replayed, nil, nil)
return {id, state}
"""
)

_HAND_BACK = """
-- KEYS: pending, lease, inflight, due. ARGV: user, token, now, at, error_json, count_attempt
if redis.call('GET', KEYS[2]) ~= ARGV[2] then return false end
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('DEL', KEYS[2])
if redis.call('EXISTS', KEYS[1]) == 0 then return {0, ARGV[3]} end
local attempts = tonumber(redis.call('HGET', KEYS[1], 'attempts') or '0')
if ARGV[6] == '1' then
  attempts = redis.call('HINCRBY', KEYS[1], 'attempts', 1)
  redis.call('HSETNX', KEYS[1], 'retry_since', ARGV[3])
  redis.call('HSET', KEYS[1], 'last_error', ARGV[5])
end
redis.call('ZADD', KEYS[4], ARGV[4], ARGV[1])
return {attempts, redis.call('HGET', KEYS[1], 'retry_since') or ARGV[3]}
"""

_REQUEUE_EXPIRED = """
-- KEYS: inflight, due. ARGV: now, lease_prefix, pending_prefix, limit
local users = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[4]))
for _, u in ipairs(users) do
  redis.call('ZREM', KEYS[1], u)
  redis.call('DEL', ARGV[2] .. u)
  if redis.call('EXISTS', ARGV[3] .. u) == 1 then
    redis.call('ZADD', KEYS[2], 'NX', ARGV[1], u)
  end
end
return #users
"""

RESTORE_FUNCTION = """
-- restore(pending key, ledger key, due, inflight, user, now, {field = {value JSON, ts}},
-- replay id or '', write): merge each field at least as new as both the applied (ledger) and
-- the pending one, due now. Returns how many merged (with write false: would merge), or -1
-- when that dead letter is already being replayed.
local function restore(pending, ledger, due, inflight, user, now, fields, replay_id, write)
  local replaying = cjson.decode(redis.call('HGET', pending, 'replay_of') or '[]')
  for _, id in ipairs(replaying) do
    if id == replay_id then return -1 end
  end
  local merged = 0
  for f, pair in pairs(fields) do
    local ts = pair[2]
    local applied = tonumber(redis.call('HGET', ledger, 't:' .. f))
    local current = tonumber(redis.call('HGET', pending, 't:' .. f))
    if (applied == nil or ts >= applied) and (current == nil or ts >= current) then
      if write then
        redis.call('HSET', pending, 'v:' .. f, pair[1], 't:' .. f, string.format('%d', ts),
                   'e:' .. f, 'replay')
      end
      merged = merged + 1
    end
  end
  if merged == 0 or not write then return merged end
  redis.call('HINCRBY', pending, 'version', 1)
  redis.call('HSETNX', pending, 'first_seen', now)
  redis.call('HSET', pending, 'due', now, 'attempts', 0)
  redis.call('HDEL', pending, 'retry_since', 'last_error')
  if replay_id ~= '' then
    replaying[#replaying + 1] = replay_id
    redis.call('HSET', pending, 'replay_of', cjson.encode(replaying))
  end
  if not redis.call('ZSCORE', inflight, user) then
    redis.call('ZADD', due, now, user)
  end
  return merged
end
"""
"""Shared by `PendingStore.restore` and the reconciliation's page script (page_script.py)."""

_RESTORE = (
    RESTORE_FUNCTION
    + """
-- KEYS: pending, ledger, due, inflight. ARGV: user, now, fields_json {f: [value, ts]}, replay_id
return restore(KEYS[1], KEYS[2], KEYS[3], KEYS[4], ARGV[1], ARGV[2], cjson.decode(ARGV[3]),
               ARGV[4], true)
"""
)


_REBIND = (
    _REBIND_FUNCTION
    + """
-- KEYS: old ledger, new ledger, ledger index, old pending, new pending, due, inflight,
--       old events, new events, old fence, new fence, old rebound, new rebound
-- ARGV: old user, new user, now, events_kept, rebound_ttl
local k = {old_ledger = KEYS[1], new_ledger = KEYS[2], index = KEYS[3], old_pending = KEYS[4],
           new_pending = KEYS[5], due = KEYS[6], inflight = KEYS[7], old_events = KEYS[8],
           new_events = KEYS[9], old_fence = KEYS[10], new_fence = KEYS[11],
           old_rebound = KEYS[12], new_rebound = KEYS[13]}
return rebind(k, ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4]), ARGV[5])
"""
)

_FENCE = """
-- KEYS: fence, pending. ARGV: until, ttl_ms, marks_json {field: [ts, event_id]} of what was sent.
-- The fence only moves later; the change it protects is read back once it has passed (settle).
local current = tonumber(redis.call('HGET', KEYS[1], 'until'))
if current == nil or tonumber(ARGV[1]) > current then
  redis.call('HSET', KEYS[1], 'until', ARGV[1])
end
for f, mark in pairs(cjson.decode(ARGV[3])) do
  redis.call('HSET', KEYS[1], 'm:' .. f, cjson.encode(mark))
end
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[2]) then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
if redis.call('EXISTS', KEYS[2]) == 1 then redis.call('HSETNX', KEYS[2], 'verify', 0) end
return 1
"""

_VERIFIED = """
-- KEYS: pending, lease, inflight, due, events, ledger
-- ARGV: user, token, now, observed_json {field: value as Recur holds it}, max_resends
-- A field Recur holds otherwise than the ledger says was overwritten by a late PATCH: queue the
-- ledger's value again (unless a newer change waits), due now, and read back again after it.
if redis.call('GET', KEYS[2]) ~= ARGV[2] then return false end
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('DEL', KEYS[2])
if redis.call('EXISTS', KEYS[1]) == 0 then return {'done', 0, 0} end
local differ = {}
for f, value in pairs(cjson.decode(ARGV[4])) do
  local wanted = redis.call('HGET', KEYS[6], 'v:' .. f)
  if wanted and wanted ~= value then differ[#differ + 1] = f end
end
local resends = tonumber(redis.call('HGET', KEYS[1], 'verify') or '0')
local resend = #differ > 0 and resends < tonumber(ARGV[5])
if resend then
  for _, f in ipairs(differ) do
    local ts = redis.call('HGET', KEYS[6], 't:' .. f)
    local current = tonumber(redis.call('HGET', KEYS[1], 't:' .. f))
    if current == nil or tonumber(ts) >= current then
      redis.call('HSET', KEYS[1], 'v:' .. f, redis.call('HGET', KEYS[6], 'v:' .. f), 't:' .. f, ts,
                 'e:' .. f, 'verify')
    end
  end
  redis.call('HSET', KEYS[1], 'verify', resends + 1, 'due', ARGV[3])
  redis.call('HINCRBY', KEYS[1], 'version', 1)
else
  redis.call('HDEL', KEYS[1], 'verify')
end
for _, k in ipairs(redis.call('HKEYS', KEYS[1])) do
  if string.sub(k, 1, 2) == 't:' then
    redis.call('ZADD', KEYS[4], tonumber(redis.call('HGET', KEYS[1], 'due') or ARGV[3]), ARGV[1])
    return {'more', #differ, resend and 1 or 0}
  end
end
redis.call('DEL', KEYS[1], KEYS[5])
return {'done', #differ, resend and 1 or 0}
"""


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


def _text(value: bytes | str) -> str:
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


def _snapshot_from(
    user_id: str, flat: list[str], event_ids: list[str], fence: list[str] | None = None
) -> Snapshot:
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


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), sort_keys=True)


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
            args += [name, _dumps(value)]
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
        texts = [_text(item) for item in flat]
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
        return _snapshot_from(
            claim.user_id,
            [_text(b) for b in flat],
            [_text(b) for b in event_ids],
            [_text(b) for b in fence],
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
        return [_text(cast(bytes | str, reply)) for reply in pipe.execute()]

    def _mark_applied(self, claim: Claim, snapshot: Snapshot, pipe: Any) -> None:
        user = claim.user_id
        values = {name: _dumps(state.value) for name, state in snapshot.fields.items()}
        moved_to = snapshot.fields.get("external_id")
        new_user = moved_to.value if moved_to is not None else None
        if not isinstance(new_user, str) or new_user == user:
            new_user = ""
        self._applied(
            keys=[
                keys.pending(user),
                keys.lease(user),
                keys.INFLIGHT,
                keys.DUE,
                PENDING_EVENTS + user,
                keys.ledger(user),
                keys.LEDGER_INDEX,
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
                    keys.pending(user),
                    keys.lease(user),
                    keys.INFLIGHT,
                    keys.DUE,
                    PENDING_EVENTS + user,
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
        return _text(written), _text(state)

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
                _dumps(error) if error else "",
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
        payload = {name: [_dumps(state.value), state.ts_ms] for name, state in fields.items()}
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
                keys.LEDGER_INDEX,
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
            user_id = _text(moved)
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
                keys.pending(user),
                keys.lease(user),
                keys.INFLIGHT,
                keys.DUE,
                PENDING_EVENTS + user,
                keys.ledger(user),
            ],
            args=[
                user,
                claim.token,
                repr(self._clock()),
                json.dumps({name: _dumps(value) for name, value in observed.items()}),
                max_resends,
            ],
        )
        if result is None:
            return None
        state, differ, resent = cast(list[Any], result)
        return Verified(state=_text(state), differ=int(differ), resent=bool(int(resent)))
