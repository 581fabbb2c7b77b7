-- KEYS: pending, ledger bucket, due, inflight. ARGV: user, now, fields_json {f: [value, ts]},
-- replay_id
return restore(KEYS[1], ledger_load(KEYS[2], ARGV[1]), KEYS[3], KEYS[4], ARGV[1], ARGV[2],
               cjson.decode(ARGV[3]), ARGV[4], true)
