-- KEYS: fence, pending. ARGV: until, ttl_ms, marks_json {field: [ts, event_id]} of what was sent.
-- The fence only moves later; the change it protects is read back once it has passed (settle).
local current = tonumber(redis.call('HGET', KEYS[1], 'until'))
if current == nil or tonumber(ARGV[1]) > current then
  redis.call('HSET', KEYS[1], 'until', ARGV[1])
end
for f, mark in pairs(cjson.decode(ARGV[3])) do
  redis.call('HSET', KEYS[1], 'm:' .. f, cjson.encode(mark))
end
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[2]) then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
if redis.call('EXISTS', KEYS[2]) == 1 then redis.call('HSETNX', KEYS[2], 'verify', 0) end
return 1
