-- KEYS: ledger bucket, email-users. ARGV: user, now, (field, value, ts)... Newer timestamps only.
local entry = ledger_load(KEYS[1], ARGV[1]) or {f = {}}
for i = 3, #ARGV, 3 do
  local applied = ledger_time(entry, ARGV[i])
  if applied == nil or tonumber(ARGV[i + 2]) >= applied then
    entry.f[ARGV[i]] = {ARGV[i + 1], ARGV[i + 2]}
    local email = ARGV[i] == 'email' and cjson.decode(ARGV[i + 1])
    if type(email) == 'string' then redis.call('HSET', KEYS[2], string.lower(email), ARGV[1]) end
  end
end
if entry.at == nil or entry.at == '' then entry.at = ARGV[2] end
ledger_save(KEYS[1], ARGV[1], entry)
return 1
