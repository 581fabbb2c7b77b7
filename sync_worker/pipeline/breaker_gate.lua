-- KEYS: breaker, probe. ARGV: now, token, probe_ttl_ms
-- Returns {action, transition}: 'pass' (closed), 'hold', or 'probe' (the caller holds the lock).
local state = redis.call('HGET', KEYS[1], 'state') or 'closed'
if state == 'closed' then return {'pass', ''} end
if state == 'open' and tonumber(ARGV[1]) < tonumber(redis.call('HGET', KEYS[1], 'open_until')) then
  return {'hold', ''}
end
if not redis.call('SET', KEYS[2], ARGV[2], 'NX', 'PX', ARGV[3]) then return {'hold', ''} end
if state == 'open' then
  redis.call('HSET', KEYS[1], 'state', 'half_open', 'changed_at', ARGV[1])
  return {'probe', 'half_open'}
end
return {'probe', ''}
