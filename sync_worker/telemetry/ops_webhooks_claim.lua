-- KEYS: outbox, due. ARGV: now, lease_until, limit, max_queued, event_prefix, admit_max
-- Admit the oldest outbox entries while fewer than max_queued are being delivered, then lease
-- up to `limit` due events. Returns {id, body, attempts, id, body, attempts, ...}.
local room = math.min(tonumber(ARGV[4]) - redis.call('ZCARD', KEYS[2]), tonumber(ARGV[6]))
for _ = 1, room do
  local body = redis.call('RPOP', KEYS[1])
  if not body then break end
  local id = cjson.decode(body)['id']
  redis.call('HSET', ARGV[5] .. id, 'body', body, 'attempts', 0)
  redis.call('ZADD', KEYS[2], ARGV[1], id)
end
local out = {}
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[1], 'LIMIT', 0, ARGV[3])) do
  local event = redis.call('HMGET', ARGV[5] .. id, 'body', 'attempts')
  if event[1] then
    redis.call('ZADD', KEYS[2], ARGV[2], id)
    out[#out + 1] = id
    out[#out + 1] = event[1]
    out[#out + 1] = event[2]
  else
    redis.call('ZREM', KEYS[2], id)
  end
end
return out
