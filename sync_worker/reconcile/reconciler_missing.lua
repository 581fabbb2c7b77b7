-- KEYS: seen. ARGV: first bucket, how many users to look at (at least, unless the buckets end).
-- Returns {next bucket or 0 after the last, missing...}: ledger users not seen in Recur, except
-- those rebound or unbound to another external id (an `external_id` field in their entry). Empty buckets cost next to nothing: a small ledger takes one call.
local bucket, wanted, looked = tonumber(ARGV[1]), tonumber(ARGV[2]), 0
local out = {0}
while bucket < LEDGER_BUCKETS and looked < wanted do
  local flat = redis.call('HGETALL', LEDGER_BUCKET_PREFIX .. string.format('%d', bucket))
  looked = looked + #flat / 2
  for i = 1, #flat, 2 do
    if redis.call('SISMEMBER', KEYS[1], flat[i]) == 0
       and not ledger_field(flat[i + 1], 'external_id') then
      out[#out + 1] = flat[i]
    end
  end
  bucket = bucket + 1
end
if bucket < LEDGER_BUCKETS then out[1] = bucket end
return out
