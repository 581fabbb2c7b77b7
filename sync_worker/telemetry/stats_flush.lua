-- KEYS: stats, this minute's history, then the trace key of each trace entry.
-- ARGV: how many counters, sums and minute counters follow; the history's TTL; the entries a
-- trace keeps and its TTL; then the (field, amount) pairs of the counters, the sums and the
-- minute counters, in that order; then the trace entries, one per trace key.
-- One call per flush: a pipeline of one command per counter and three per trace entry cost the
-- worker more CPU, per synced user, than the rest of the flush.
local counters, sums, minute = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local i = 7
for _ = 1, counters do
  redis.call('HINCRBY', KEYS[1], ARGV[i], ARGV[i + 1])
  i = i + 2
end
for _ = 1, sums do
  redis.call('HINCRBYFLOAT', KEYS[1], ARGV[i], ARGV[i + 1])
  i = i + 2
end
if minute > 0 then
  for _ = 1, minute do
    redis.call('HINCRBY', KEYS[2], ARGV[i], ARGV[i + 1])
    i = i + 2
  end
  redis.call('EXPIRE', KEYS[2], ARGV[4])
end
local kept = tonumber(ARGV[5]) - 1
for k = 3, #KEYS do
  redis.call('LPUSH', KEYS[k], ARGV[i])
  redis.call('LTRIM', KEYS[k], 0, kept)
  redis.call('EXPIRE', KEYS[k], ARGV[6])
  i = i + 1
end
return i - 7
