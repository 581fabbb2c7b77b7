-- KEYS: entry. ARGV: fields_json, change_json. Appends to the history as text (no re-encoding).
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local history = redis.call('HGET', KEYS[1], 'history') or '[]'
if history == '[]' then
  history = '[' .. ARGV[2] .. ']'
else
  history = string.sub(history, 1, -2) .. ',' .. ARGV[2] .. ']'
end
redis.call('HSET', KEYS[1], 'fields', ARGV[1], 'history', history)
return 1
