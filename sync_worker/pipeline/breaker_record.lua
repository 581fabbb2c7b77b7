-- KEYS: breaker, window, probe, outages, probed
-- ARGV: now, successes, failures, window_s, min_calls, ratio, base_cool, max_cool, is_probe,
--       outages_kept
-- Returns {state, transition, calls, failures, open_until (outage start when it closed)}.
local now = tonumber(ARGV[1])
local ok, bad = tonumber(ARGV[2]), tonumber(ARGV[3])
local state = redis.call('HGET', KEYS[1], 'state') or 'closed'
if ARGV[9] == '1' then
  if state ~= 'half_open' then return {state, '', 0, 0, '0'} end
  redis.call('DEL', KEYS[3])
  if bad > 0 then
    local cool = tonumber(redis.call('HGET', KEYS[1], 'cool_down') or ARGV[7])
    cool = math.min(tonumber(ARGV[8]), cool * 2)
    local until_ = tostring(now + cool)
    redis.call('HSET', KEYS[1], 'state', 'open', 'cool_down', tostring(cool),
               'open_until', until_, 'changed_at', ARGV[1])
    return {'open', 'reopened', 0, 0, until_}
  end
  local since = redis.call('HGET', KEYS[1], 'outage_since') or ARGV[1]
  redis.call('ZADD', KEYS[4], now, since .. ':' .. ARGV[1])
  redis.call('ZREMRANGEBYRANK', KEYS[4], 0, -tonumber(ARGV[10]) - 1)
  redis.call('HSET', KEYS[1], 'state', 'closed', 'cool_down', ARGV[7], 'changed_at', ARGV[1])
  redis.call('HDEL', KEYS[1], 'open_until', 'outage_since')
  redis.call('DEL', KEYS[2], KEYS[5])
  return {'closed', 'closed', 0, 0, since}
end
if state ~= 'closed' then
  return {state, '', 0, 0, redis.call('HGET', KEYS[1], 'open_until') or '0'}
end
local second = math.floor(now)
if ok + bad > 0 then redis.call('HINCRBY', KEYS[2], second .. ':c', ok + bad) end
if bad > 0 then redis.call('HINCRBY', KEYS[2], second .. ':f', bad) end
local oldest = second - tonumber(ARGV[4]) + 1
local calls, failures = 0, 0
local raw = redis.call('HGETALL', KEYS[2])
for i = 1, #raw, 2 do
  local at, kind = string.match(raw[i], '^(%-?%d+):(%a)$')
  if at == nil or tonumber(at) < oldest then
    redis.call('HDEL', KEYS[2], raw[i])
  elseif kind == 'c' then
    calls = calls + tonumber(raw[i + 1])
  else
    failures = failures + tonumber(raw[i + 1])
  end
end
redis.call('PEXPIRE', KEYS[2], (tonumber(ARGV[4]) + 1) * 1000)
if bad > 0 and calls >= tonumber(ARGV[5]) and failures >= tonumber(ARGV[6]) * calls then
  local until_ = tostring(now + tonumber(ARGV[7]))
  redis.call('HSET', KEYS[1], 'state', 'open', 'cool_down', ARGV[7], 'open_until', until_,
             'outage_since', ARGV[1], 'changed_at', ARGV[1],
             'trip_calls', calls, 'trip_failures', failures)
  redis.call('HINCRBY', KEYS[1], 'trips', 1)
  redis.call('DEL', KEYS[2])
  return {'open', 'opened', calls, failures, until_}
end
return {'closed', '', calls, failures, '0'}
