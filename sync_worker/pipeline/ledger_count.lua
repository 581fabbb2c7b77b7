-- How many users have an entry: every bucket's size, plus the users still in the old layout.
local n = redis.call('SCARD', LEDGER_LEGACY_INDEX)
for b = 0, LEDGER_BUCKETS - 1 do
  n = n + redis.call('HLEN', LEDGER_BUCKET_PREFIX .. string.format('%d', b))
end
return n
