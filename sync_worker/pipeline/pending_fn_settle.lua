local function settle(pending, lease, inflight, due, events, user, token, now, sent, n_events,
                      resolved, fence, verify_delay)
  for f, mark in pairs(sent) do
    local now_ts = tonumber(redis.call('HGET', pending, 't:' .. f))
    if now_ts == mark[1] and redis.call('HGET', pending, 'e:' .. f) == mark[2] then
      redis.call('HDEL', pending, 'v:' .. f, 't:' .. f, 'e:' .. f)
    end
  end
  local owned = redis.call('GET', lease) == token
  if owned then
    redis.call('ZREM', inflight, user)
    redis.call('DEL', lease)
  end
  local over = {}
  for _, id in ipairs(resolved) do over[id] = true end
  local left = {}
  for _, id in ipairs(cjson.decode(redis.call('HGET', pending, 'replay_of') or '[]')) do
    if not over[id] then left[#left + 1] = id end
  end
  if #left > 0 then
    redis.call('HSET', pending, 'replay_of', cjson.encode(left))
  else
    redis.call('HDEL', pending, 'replay_of')
  end
  local state = nil
  for _, k in ipairs(redis.call('HKEYS', pending)) do
    if string.sub(k, 1, 2) == 't:' then
      state = 'more'
      break
    end
  end
  if state == nil and verify_delay ~= nil and redis.call('HEXISTS', pending, 'verify') == 1 then
    state = 'verify'
  end
  if state == nil then
    redis.call('DEL', pending, events)
    return 'done'
  end
  redis.call('HSET', pending, 'attempts', 0, 'first_seen', now)
  redis.call('HDEL', pending, 'retry_since', 'last_error')
  redis.call('LTRIM', events, n_events, -1)
  if owned then
    local at = tonumber(redis.call('HGET', pending, 'due') or now)
    if state == 'verify' then
      at = tonumber(now) + verify_delay
      local fenced = tonumber(redis.call('HGET', fence, 'until'))
      if fenced ~= nil and fenced + verify_delay > at then at = fenced + verify_delay end
      redis.call('HSET', pending, 'due', string.format('%.3f', at))
    end
    redis.call('ZADD', due, at, user)
  end
  return state
end
