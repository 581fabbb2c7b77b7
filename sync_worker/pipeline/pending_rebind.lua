-- KEYS: old ledger, new ledger, ledger index, old pending, new pending, due, inflight,
--       old events, new events, old fence, new fence, old rebound, new rebound
-- ARGV: old user, new user, now, events_kept, rebound_ttl
local k = {old_ledger = KEYS[1], new_ledger = KEYS[2], index = KEYS[3], old_pending = KEYS[4],
           new_pending = KEYS[5], due = KEYS[6], inflight = KEYS[7], old_events = KEYS[8],
           new_events = KEYS[9], old_fence = KEYS[10], new_fence = KEYS[11],
           old_rebound = KEYS[12], new_rebound = KEYS[13]}
return rebind(k, ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4]), ARGV[5])
