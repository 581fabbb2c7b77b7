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
