-- KEYS: seen. ARGV: first bucket, how many buckets. Returns {next bucket or 0 after the last,
-- missing...}: ledger users not seen in Recur, except those rebound or unbound to another
-- external id (an `external_id` field in their entry, ledger_fn.lua).
local first = tonumber(ARGV[1])
local stop = math.min(first + tonumber(ARGV[2]), LEDGER_BUCKETS)
local out = {stop < LEDGER_BUCKETS and stop or 0}
for b = first, stop - 1 do
  local flat = redis.call('HGETALL', LEDGER_BUCKET_PREFIX .. string.format('%d', b))
  for i = 1, #flat, 2 do
    if redis.call('SISMEMBER', KEYS[1], flat[i]) == 0
       and not string.find(flat[i + 1], '\nexternal_id\t', 1, true) then
      out[#out + 1] = flat[i]
    end
  end
end
return out
