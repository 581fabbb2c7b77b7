-- KEYS: ledger hashes. One JSON reply for all of them: C-speed to decode, one round trip.
local out = {}
for i, key in ipairs(KEYS) do
  out[i] = redis.call('HGETALL', key)
end
return cjson.encode(out)
