-- KEYS: pending, lease, inflight, due, events, ledger, ledger_index, dlq_index, fence,
--       new ledger, new pending, new events, new fence, old rebound, new rebound (the last six
--       only with a new user)
-- ARGV: user, token, now, sent_json {field: [ts, event_id]}, values_json {field: value}, n_events,
--       resolved_json [dead letter ids], dlq_prefix, verify_delay, new user or '', events_kept,
--       rebound_ttl
local sent = cjson.decode(ARGV[4])
local values = cjson.decode(ARGV[5])
for f, mark in pairs(sent) do
  local ts = mark[1]
  local lt = tonumber(redis.call('HGET', KEYS[6], 't:' .. f))
  if lt == nil or ts >= lt then
    redis.call('HSET', KEYS[6], 'v:' .. f, values[f], 't:' .. f, string.format('%d', ts))
  end
end
redis.call('HSET', KEYS[6], 'applied_at', ARGV[3])
redis.call('SADD', KEYS[7], ARGV[1])
local resolved = cjson.decode(ARGV[7])
for _, id in ipairs(resolved) do
  redis.call('DEL', ARGV[8] .. id)
  redis.call('ZREM', KEYS[8], id)
end
-- A send that moved the customer off this external id (rebind, unbind) ends its read-back: a
-- read by this id would find nothing.
if sent['external_id'] ~= nil then redis.call('HDEL', KEYS[1], 'verify') end
local state = settle(KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], ARGV[1], ARGV[2], ARGV[3], sent,
                     tonumber(ARGV[6]), resolved, KEYS[9], tonumber(ARGV[9]))
-- A rebind moves the rest in the same step: no claim may send the old id's change in between.
if ARGV[10] ~= '' then
  local k = {old_ledger = KEYS[6], new_ledger = KEYS[10], index = KEYS[7], old_pending = KEYS[1],
             new_pending = KEYS[11], due = KEYS[4], inflight = KEYS[3], old_events = KEYS[5],
             new_events = KEYS[12], old_fence = KEYS[9], new_fence = KEYS[13],
             old_rebound = KEYS[14], new_rebound = KEYS[15]}
  if rebind(k, ARGV[1], ARGV[10], ARGV[3], tonumber(ARGV[11]), ARGV[12]) == 1 then
    state = 'done'
  end
end
return state
