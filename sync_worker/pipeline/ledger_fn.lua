-- The ledger's layout, for every script that reads or writes it (ledger.py is its Python side,
-- and tests/pipeline/test_ledger_layout.py holds the two to the same buckets and encoding).
-- A user's entry is one field of a bucket hash, `rs:ledger-bucket:{n}` with n from
-- `ledger_bucket`: small hashes, which Redis keeps as listpacks, so a customer costs its bytes
-- and no key of its own. The value is text, fields sorted by code:
--   applied_at LF code TAB event time (ms) TAB value (JSON) LF code TAB ...
-- a field's code is one letter for the fields events carry (LEDGER_CODES), else its name. JSON
-- text holds no raw LF, and field names no TAB or LF. In Lua an entry is
-- {at = applied_at, f = {field name = {value, event time}}}, all as stored (text).
--
-- Entries written before this layout, `rs:ledger:{user}` hashes (`v:{field}`, `t:{field}`,
-- `applied_at`) whose users are in the `rs:ledger-index` set, are read merged in (the newer
-- event time wins) while that set exists, and moved into their bucket by the user's next write;
-- `Ledger.migrate` moves the rest, and the set goes with its last member.
local LEDGER_BUCKET_PREFIX = 'rs:ledger-bucket:'
local LEDGER_BUCKETS = 16384
local LEDGER_LEGACY_PREFIX = 'rs:ledger:'
local LEDGER_LEGACY_INDEX = 'rs:ledger-index'
local LEDGER_CODES = {email = 'e', external_id = 'x', metadata = 'm', name = 'n'}
local LEDGER_NAMES = {e = 'email', x = 'external_id', m = 'metadata', n = 'name'}

-- The key of a user's bucket: a 31-polynomial of its bytes mod 2^32 (four bytes a step, exact
-- in doubles: h * 31^4 < 2^53), its high half added in.
local function ledger_bucket(user)
  local byte, h, i, n = string.byte, 0, 1, #user
  while i + 3 <= n do
    local a, b, c, d = byte(user, i, i + 3)
    h = (h * 923521 + a * 29791 + b * 961 + c * 31 + d) % 4294967296
    i = i + 4
  end
  while i <= n do
    h = (h * 31 + byte(user, i)) % 4294967296
    i = i + 1
  end
  return LEDGER_BUCKET_PREFIX .. string.format('%d', (h + math.floor(h / 65536)) % LEDGER_BUCKETS)
end

-- Whether entries of the old layout may still exist (asked once per script).
local ledger_legacy_exists = nil
local function ledger_legacy()
  if ledger_legacy_exists == nil then
    ledger_legacy_exists = redis.call('EXISTS', LEDGER_LEGACY_INDEX) == 1
  end
  return ledger_legacy_exists
end

local function ledger_unpack(packed)
  local stop = string.find(packed, '\n', 1, true)
  if stop == nil then return {at = packed, f = {}} end
  local entry = {at = string.sub(packed, 1, stop - 1), f = {}}
  local pos = stop + 1
  while pos <= #packed do
    local tab1 = string.find(packed, '\t', pos, true)
    local tab2 = string.find(packed, '\t', tab1 + 1, true)
    stop = string.find(packed, '\n', tab2 + 1, true) or #packed + 1
    local code = string.sub(packed, pos, tab1 - 1)
    entry.f[LEDGER_NAMES[code] or code] =
      {string.sub(packed, tab2 + 1, stop - 1), string.sub(packed, tab1 + 1, tab2 - 1)}
    pos = stop + 1
  end
  return entry
end

local function ledger_pack(entry)
  local codes, names = {}, {}
  for f in pairs(entry.f) do
    local code = LEDGER_CODES[f] or f
    codes[#codes + 1] = code
    names[code] = f
  end
  table.sort(codes)
  local parts = {entry.at or ''}
  for i, code in ipairs(codes) do
    local pair = entry.f[names[code]]
    parts[i + 1] = code .. '\t' .. pair[2] .. '\t' .. pair[1]
  end
  return table.concat(parts, '\n')
end

-- The event time (a number) of a field of an entry; nil without entry or field.
local function ledger_time(entry, f)
  local pair = entry and entry.f[f]
  return pair and tonumber(pair[2])
end

-- The user's entry (`bucket` is ledger_bucket(user), passed in KEYS by callers that can), or nil.
local function ledger_load(bucket, user)
  local packed = redis.call('HGET', bucket, user)
  local entry = nil
  if packed then entry = ledger_unpack(packed) end
  if ledger_legacy() then
    local raw = redis.call('HGETALL', LEDGER_LEGACY_PREFIX .. user)
    if #raw > 0 then
      local old = {}
      for i = 1, #raw, 2 do old[raw[i]] = raw[i + 1] end
      entry = entry or {f = {}}
      for k, ts in pairs(old) do
        local f = string.sub(k, 3)
        local have = ledger_time(entry, f)
        if string.sub(k, 1, 2) == 't:' and old['v:' .. f]
           and (have == nil or tonumber(ts) > have) then
          entry.f[f] = {old['v:' .. f], ts}
        end
      end
      local at = old['applied_at']
      if at and (entry.at == nil or entry.at == '' or tonumber(at) > tonumber(entry.at)) then
        entry.at = at
      end
    end
  end
  return entry
end

-- The user's entry packed, as stored, or false: cheaper than ledger_load when only a few
-- fields are read (ledger_field).
local function ledger_get(bucket, user)
  if not ledger_legacy() then return redis.call('HGET', bucket, user) end
  local entry = ledger_load(bucket, user)
  return entry ~= nil and ledger_pack(entry)
end

-- A field of a packed entry: its value and event time (text), or nil. A value holds no LF, so
-- LF field TAB starts that field's line and nothing else.
local function ledger_field(packed, f)
  local code = LEDGER_CODES[f] or f
  local start = string.find(packed, '\n' .. code .. '\t', 1, true)
  if start == nil then return nil end
  local tab = string.find(packed, '\t', start + #code + 2, true)
  local stop = string.find(packed, '\n', tab + 1, true) or #packed + 1
  return string.sub(packed, tab + 1, stop - 1), string.sub(packed, start + #code + 2, tab - 1)
end

-- Move a user out of the old layout, if it was in it.
local function ledger_forget_legacy(user)
  if ledger_legacy() and redis.call('DEL', LEDGER_LEGACY_PREFIX .. user) == 1 then
    redis.call('SREM', LEDGER_LEGACY_INDEX, user)
  end
end

-- Write the user's entry.
local function ledger_save(bucket, user, entry)
  redis.call('HSET', bucket, user, ledger_pack(entry))
  ledger_forget_legacy(user)
end

-- Delete the user's entry (a rebind moved it).
local function ledger_drop(bucket, user)
  redis.call('HDEL', bucket, user)
  ledger_forget_legacy(user)
end
