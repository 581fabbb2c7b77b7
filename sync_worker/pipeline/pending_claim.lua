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
