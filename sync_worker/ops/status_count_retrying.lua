-- KEYS: due. ARGV: start, stop, pending_prefix. Returns {users in the slice, of them retrying}.
local users = redis.call('ZRANGE', KEYS[1], ARGV[1], ARGV[2])
local retrying = 0
for _, user in ipairs(users) do
  if tonumber(redis.call('HGET', ARGV[3] .. user, 'attempts') or '0') > 0 then
    retrying = retrying + 1
  end
end
return {#users, retrying}
