-- KEYS: pending, lease, inflight, due, events, ledger bucket
-- ARGV: user, token, now, observed_json {field: value as Recur holds it}, max_resends
-- A field Recur holds otherwise than the ledger says was overwritten by a late PATCH: queue the
-- ledger's value again (unless a newer change waits), due now, and read back again after it.
if redis.call('GET', KEYS[2]) ~= ARGV[2] then return false end
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('DEL', KEYS[2])
if redis.call('EXISTS', KEYS[1]) == 0 then return {'done', 0, 0} end
local ledger = ledger_load(KEYS[6], ARGV[1])
local differ = {}
for f, value in pairs(cjson.decode(ARGV[4])) do
  local wanted = ledger and ledger.f[f]
  if wanted and wanted[1] ~= value then differ[#differ + 1] = f end
end
local resends = tonumber(redis.call('HGET', KEYS[1], 'verify') or '0')
local resend = #differ > 0 and resends < tonumber(ARGV[5])
if resend then
  for _, f in ipairs(differ) do
    local value, ts = ledger.f[f][1], ledger.f[f][2]
    local current = tonumber(redis.call('HGET', KEYS[1], 't:' .. f))
    if current == nil or tonumber(ts) >= current then
      redis.call('HSET', KEYS[1], 'v:' .. f, value, 't:' .. f, ts, 'e:' .. f, 'verify')
    end
  end
  redis.call('HSET', KEYS[1], 'verify', resends + 1, 'due', ARGV[3])
  redis.call('HINCRBY', KEYS[1], 'version', 1)
else
  redis.call('HDEL', KEYS[1], 'verify')
end
for _, k in ipairs(redis.call('HKEYS', KEYS[1])) do
  if string.sub(k, 1, 2) == 't:' then
    redis.call('ZADD', KEYS[4], tonumber(redis.call('HGET', KEYS[1], 'due') or ARGV[3]), ARGV[1])
    return {'more', #differ, resend and 1 or 0}
  end
end
redis.call('DEL', KEYS[1], KEYS[5])
return {'done', #differ, resend and 1 or 0}
