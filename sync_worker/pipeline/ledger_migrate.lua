-- ARGV: how many users. Moves that many entries of the old layout into their buckets
-- (ledger_fn.lua). Returns {how many moved, how many users the old layout still holds}.
local moved = 0
for _, user in ipairs(redis.call('SRANDMEMBER', LEDGER_LEGACY_INDEX, tonumber(ARGV[1]))) do
  local bucket = ledger_bucket(user)
  local entry = ledger_load(bucket, user)
  if entry ~= nil then
    ledger_save(bucket, user, entry)
    moved = moved + 1
  end
  redis.call('SREM', LEDGER_LEGACY_INDEX, user)
end
return {moved, redis.call('SCARD', LEDGER_LEGACY_INDEX)}
