-- restore(pending key, the user's ledger entry or nil (ledger_fn.lua), due, inflight, user, now,
-- {field = {value JSON, ts}}, replay id or '', write): merge each field at least as new as both
-- the applied (ledger) and the pending one, due now. Returns how many merged (with write false:
-- would merge), or -1 when that dead letter is already being replayed.
local function restore(pending, ledger, due, inflight, user, now, fields, replay_id, write)
  local replaying = cjson.decode(redis.call('HGET', pending, 'replay_of') or '[]')
  for _, id in ipairs(replaying) do
    if id == replay_id then return -1 end
  end
  local merged = 0
  for f, pair in pairs(fields) do
    local ts = pair[2]
    local applied = ledger_time(ledger, f)
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
