-- KEYS: pending, lease, inflight, due, events, dlq_index
-- ARGV: user, token, now, sent_json, n_events, replay_of_json, new_id, dlq_prefix,
--       common_json {field: value}, created_json {field: value}
local common = cjson.decode(ARGV[9])
local function write(key, fields)
  for k, v in pairs(fields) do redis.call('HSET', key, k, v) end
end
local replayed = cjson.decode(ARGV[6])
local updated = 0
for _, id in ipairs(replayed) do
  local key = ARGV[8] .. id
  if redis.call('EXISTS', key) == 1 then
    write(key, common)
    redis.call('HINCRBY', key, 'replay_count', 1)
    redis.call('ZADD', KEYS[6], ARGV[3], id)
    updated = updated + 1
  end
end
local id = ''
if updated == 0 then
  id = ARGV[7]
  write(ARGV[8] .. id, common)
  write(ARGV[8] .. id, cjson.decode(ARGV[10]))
  redis.call('ZADD', KEYS[6], ARGV[3], id)
end
local state = settle(KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], ARGV[1], ARGV[2], ARGV[3],
                     cjson.decode(ARGV[4]), tonumber(ARGV[5]), replayed, nil, nil)
return {id, state}
