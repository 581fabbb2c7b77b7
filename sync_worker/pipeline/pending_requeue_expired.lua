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
