-- KEYS: old ledger bucket, new ledger bucket, old pending, new pending, due, inflight,
--       old events, new events, old fence, new fence, old rebound, new rebound
-- ARGV: old user, new user, now, events_kept, rebound_ttl
local k = {old_ledger = KEYS[1], new_ledger = KEYS[2], old_pending = KEYS[3],
           new_pending = KEYS[4], due = KEYS[5], inflight = KEYS[6], old_events = KEYS[7],
           new_events = KEYS[8], old_fence = KEYS[9], new_fence = KEYS[10],
           old_rebound = KEYS[11], new_rebound = KEYS[12]}
return rebind(k, ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4]), ARGV[5])
