-- KEYS: bucket, cooldown. ARGV: rate, burst, wanted.
-- Returns {granted, seconds to wait}: up to `wanted` tokens, or none and how long until one.
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local until_ = tonumber(redis.call('GET', KEYS[2]) or '0')
if until_ > now then return {0, tostring(until_ - now)} end
local rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local b = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(b[1]) or burst
local ts = tonumber(b[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - ts) * rate)
local granted = math.min(tonumber(ARGV[3]), math.floor(tokens))
local wait = '0'
if granted >= 1 then
  tokens = tokens - granted
else
  granted = 0
  wait = tostring((1 - tokens) / rate)
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'ts', tostring(now))
redis.call('PEXPIRE', KEYS[1], 60000)
return {granted, wait}
