-- KEYS: ledger, index, email-users. ARGV: user, now, (field, value, ts)... Newer timestamps only.
for i = 3, #ARGV, 3 do
  local lt = tonumber(redis.call('HGET', KEYS[1], 't:' .. ARGV[i]))
  if lt == nil or tonumber(ARGV[i + 2]) >= lt then
    redis.call('HSET', KEYS[1], 'v:' .. ARGV[i], ARGV[i + 1], 't:' .. ARGV[i], ARGV[i + 2])
    local email = ARGV[i] == 'email' and cjson.decode(ARGV[i + 1])
    if type(email) == 'string' then redis.call('HSET', KEYS[3], string.lower(email), ARGV[1]) end
  end
end
redis.call('HSETNX', KEYS[1], 'applied_at', ARGV[2])
redis.call('SADD', KEYS[2], ARGV[1])
return 1
