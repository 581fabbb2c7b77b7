-- KEYS: due, event. ARGV: id, at, max_attempts
-- Count a failed attempt: due again at `at`, or dropped once the attempts reach the maximum.
-- Returns the attempts so far, or 0 if the event is gone (another deliverer settled it).
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 0 end
local attempts = redis.call('HINCRBY', KEYS[2], 'attempts', 1)
if attempts >= tonumber(ARGV[3]) then
  redis.call('DEL', KEYS[2])
  redis.call('ZREM', KEYS[1], ARGV[1])
else
  redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
end
return attempts
