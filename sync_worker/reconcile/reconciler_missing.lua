-- KEYS: ledger-index, seen. ARGV: cursor, count, ledger prefix. Returns {next cursor, missing...}:
-- ledger users not seen in Recur, except those rebound or unbound to another external id.
local scan = redis.call('SSCAN', KEYS[1], ARGV[1], 'COUNT', ARGV[2])
local out = {scan[1]}
for _, user in ipairs(scan[2]) do
  if redis.call('SISMEMBER', KEYS[2], user) == 0
     and redis.call('HEXISTS', ARGV[3] .. user, 'v:external_id') == 0 then
    out[#out + 1] = user
  end
end
return out
