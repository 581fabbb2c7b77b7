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
