-- KEYS: pending, lease, inflight, due, events, ledger bucket, dlq_index, fence,
--       new ledger bucket, new pending, new events, new fence, old rebound, new rebound (the
--       last six only with a new user)
-- ARGV: user, token, now, sent_json {field: [ts, event_id]}, values_json {field: value}, n_events,
--       resolved_json [dead letter ids], dlq_prefix, verify_delay, new user or '', events_kept,
--       rebound_ttl
local sent = cjson.decode(ARGV[4])
local values = cjson.decode(ARGV[5])
local ledger = ledger_load(KEYS[6], ARGV[1]) or {f = {}}
for f, mark in pairs(sent) do
  local ts = mark[1]
  local lt = ledger_time(ledger, f)
  if lt == nil or ts >= lt then ledger.f[f] = {values[f], string.format('%d', ts)} end
end
ledger.at = string.format('%.3f', tonumber(ARGV[3]))  -- a millisecond is precise enough
ledger_save(KEYS[6], ARGV[1], ledger)
local resolved = cjson.decode(ARGV[7])
for _, id in ipairs(resolved) do
  redis.call('DEL', ARGV[8] .. id)
  redis.call('ZREM', KEYS[7], id)
end
-- A send that moved the customer off this external id (rebind, unbind) ends its read-back: a
-- read by this id would find nothing.
if sent['external_id'] ~= nil then redis.call('HDEL', KEYS[1], 'verify') end
local state = settle(KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], ARGV[1], ARGV[2], ARGV[3], sent,
                     tonumber(ARGV[6]), resolved, KEYS[8], tonumber(ARGV[9]))
-- A rebind moves the rest in the same step: no claim may send the old id's change in between.
if ARGV[10] ~= '' then
  local k = {old_ledger = KEYS[6], new_ledger = KEYS[9], old_pending = KEYS[1],
             new_pending = KEYS[10], due = KEYS[4], inflight = KEYS[3], old_events = KEYS[5],
             new_events = KEYS[11], old_fence = KEYS[8], new_fence = KEYS[12],
             old_rebound = KEYS[13], new_rebound = KEYS[14]}
  if rebind(k, ARGV[1], ARGV[10], ARGV[3], tonumber(ARGV[11]), ARGV[12]) == 1 then
    state = 'done'
  end
end
return state
