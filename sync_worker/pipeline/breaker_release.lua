-- KEYS: probe. ARGV: token. Free the probe lock without a verdict (nothing was sent).
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 1
