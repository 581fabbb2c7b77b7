-- KEYS: the users' ledger buckets. ARGV: the users. Each user's entry packed (ledger_fn.lua), or
-- nil: one round trip for all of them.
local out = {}
for i, user in ipairs(ARGV) do
  local entry = ledger_load(KEYS[i], user)
  out[i] = entry ~= nil and ledger_pack(entry)
end
return out
