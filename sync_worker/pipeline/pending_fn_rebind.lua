-- After Recur moved a customer from one external id to another, move what we know with it.
local function merge_fields(from, to, floor)
  -- Copy each field of `from` at least as new as the one in `to` and, given a `floor` (the new
  -- user's ledger entry), as the one applied there: an older change would undo a newer applied
  -- one.
  local merged = 0
  local raw = redis.call('HGETALL', from)
  for i = 1, #raw, 2 do
    local k = raw[i]
    if string.sub(k, 1, 2) == 't:' and k ~= 't:external_id' then
      local f = string.sub(k, 3)
      local ts = tonumber(raw[i + 1])
      local current = tonumber(redis.call('HGET', to, k))
      local applied = ledger_time(floor, f)
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

-- Drop the fields of a pending change older than the applied ones (`ledger`, an entry or nil):
-- after a rebind brought the old id's ledger, the new id's change may hold a field that was
-- accepted before it and is now stale. Returns how many fields are left.
local function prune(pending, ledger)
  local left = 0
  local raw = redis.call('HGETALL', pending)
  for i = 1, #raw, 2 do
    local k = raw[i]
    if string.sub(k, 1, 2) == 't:' then
      local f = string.sub(k, 3)
      local applied = ledger_time(ledger, f)
      if applied ~= nil and tonumber(raw[i + 1]) < applied then
        redis.call('HDEL', pending, 'v:' .. f, k, 'e:' .. f)
      else
        left = left + 1
      end
    end
  end
  return left
end

-- keys: {old_ledger, new_ledger (their buckets), old_pending, new_pending, due, inflight,
-- old_events, new_events, old_fence, new_fence, old_rebound, new_rebound}. Returns 1 when the
-- old user's pending change moved.
local function rebind(k, old_user, new_user, now, events_kept, rebound_ttl)
  -- The old id's applied fields move, each unless the new id's is newer; not its external_id,
  -- which says where it moved from.
  local old = ledger_load(k.old_ledger, old_user)
  local applied = ledger_load(k.new_ledger, new_user)
  -- The customer holds the new id now: an unbind of that id recorded earlier no longer holds.
  if applied ~= nil then applied.f.external_id = nil end
  if old ~= nil then
    applied = applied or {f = {}}
    for f, pair in pairs(old.f) do
      local current = ledger_time(applied, f)
      if f ~= 'external_id' and (current == nil or tonumber(pair[2]) >= current) then
        applied.f[f] = pair
      end
    end
    if old.at ~= nil and old.at ~= '' then applied.at = old.at end
    ledger_drop(k.old_ledger, old_user)
  end
  if applied ~= nil then ledger_save(k.new_ledger, new_user, applied) end
  -- A dead letter written under the old id is replayed to the customer's new one; the new id
  -- holds a customer now, so it points nowhere (a move back cannot make a loop).
  redis.call('SET', k.old_rebound, new_user, 'EX', rebound_ttl)
  redis.call('DEL', k.new_rebound)
  -- Also under a claim: one that has not read its snapshot yet then finds nothing stale (or
  -- nothing at all, and is released), and one that has cannot settle a stale field.
  if redis.call('EXISTS', k.new_pending) == 1 and prune(k.new_pending, applied) == 0
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
  if merge_fields(k.old_pending, k.new_pending, applied) > 0 then
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
