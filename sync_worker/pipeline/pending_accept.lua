-- KEYS: event_seen, pending, ledger bucket, due, inflight, events, trace, email-users
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
local ledger = ledger_load(KEYS[3], ARGV[2])
for i = 12, #ARGV, 2 do
  local f = ARGV[i]
  local applied = ledger_time(ledger, f)
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
