-- KEYS: ledger bucket. ARGV: user, field... Removes those fields from the user's entry
-- (ledger_fn.lua); 1 if it had one.
local entry = ledger_load(KEYS[1], ARGV[1])
if entry == nil then return 0 end
for i = 2, #ARGV do entry.f[ARGV[i]] = nil end
ledger_save(KEYS[1], ARGV[1], entry)
return 1
