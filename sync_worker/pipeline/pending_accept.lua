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
-- One read and one write of the pending hash, not one of each per field and counter: a
-- redis.call costs more than the command it runs, and every write is a command in the AOF.
local asked = {'version', 'first_seen', 'attempts'}
for _, f in ipairs(names) do asked[#asked + 1] = 't:' .. f end
local have = redis.call('HMGET', KEYS[2], unpack(asked))
local ledger = ledger_load(KEYS[3], ARGV[2])
local writes = {}
for i = 12, #ARGV, 2 do
  local f = ARGV[i]
  local applied = ledger_time(ledger, f)
  local pending = tonumber(have[3 + (i - 10) / 2])
  if (applied == nil or ts >= applied) and (pending == nil or ts >= pending) then
    local n = #writes
    writes[n + 1], writes[n + 2] = 'v:' .. f, ARGV[i + 1]
    writes[n + 3], writes[n + 4] = 't:' .. f, ARGV[7]
    writes[n + 5], writes[n + 6] = 'e:' .. f, ARGV[1]
    -- The newest email finds the user of a customer Checkout made without an external id.
    local email = f == 'email' and cjson.decode(ARGV[i + 1])
    if type(email) == 'string' then redis.call('HSET', KEYS[8], string.lower(email), ARGV[2]) end
    merged[#merged + 1] = f
  end
end
if #merged == 0 then
  trace('stale')
  return {1, 0}
end
if redis.call('RPUSH', KEYS[6], ARGV[1]) > tonumber(ARGV[8]) then
  redis.call('LTRIM', KEYS[6], -tonumber(ARGV[8]), -1)
end
local version = tonumber(have[1] or '0') + 1
local now = tonumber(ARGV[3])
local first = tonumber(have[2])
if first == nil then
  first = now
  writes[#writes + 1], writes[#writes + 2] = 'first_seen', ARGV[3]
end
local due = math.min(now + tonumber(ARGV[4]), first + tonumber(ARGV[5]))
local n = #writes
writes[n + 1], writes[n + 2] = 'version', string.format('%d', version)
writes[n + 3], writes[n + 4] = 'due', tostring(due)
redis.call('HSET', KEYS[2], unpack(writes))
if not redis.call('ZSCORE', KEYS[5], ARGV[2]) then
  if tonumber(have[3] or '0') > 0 then
    redis.call('ZADD', KEYS[4], 'NX', due, ARGV[2])
  else
    redis.call('ZADD', KEYS[4], due, ARGV[2])
  end
end
trace('merged', due)
return {1, version}
