-- KEYS: seen, checkpoint, progress, due, inflight, email-users. ARGV: the page's body as Recur
-- sent it ({"data": [customer, ...], ...}), seen TTL, pending prefix, now, '1' to repair or '0'
-- (a dry run: count what would merge), '1' to bind by email or '0', progress JSON ('' for
-- none), checkpoint items (none in a dry run). Returns {customers, customers with an
-- external id, unknown ids, email-mismatch ids, drifted users, customers whose name was
-- compared, same for metadata, bindable users}; a drifted user is {id, fields merged, (field,
-- ledger value, ledger event time)...} for name then metadata, the fields as in
-- drift.compare_page; a bindable user (drift.bindable) is {id, fields merged}. A field absent from the answer is not
-- compared. A page whose compared fields are not the documented types is refused (an error
-- reply starting MALFORMED) before anything is written.
local null, decode = cjson.null, cjson.decode
local repair, bind = ARGV[5] == '1', ARGV[6] == '1'

local function malformed(why)
  return redis.error_reply('MALFORMED ' .. why)
end

-- Absent or null, or of the type wanted.
local function optional(v, wanted)
  return v == nil or v == null or type(v) == wanted
end

local decoded, page = pcall(decode, ARGV[1])
if not decoded or type(page) ~= 'table' or type(page.data) ~= 'table' then
  return malformed('the page is not a JSON object with a data list')
end
local rows, unbound = {}, {}
for i, c in ipairs(page.data) do
  if type(c) ~= 'table' or type(c.email) ~= 'string' or not optional(c.name, 'string')
     or not optional(c.metadata, 'table') or not optional(c.external_id, 'string') then
    return malformed('customer ' .. i .. ': email, name, metadata or external_id')
  end
  local user = c.external_id
  if user ~= nil and user ~= null and user ~= '' then
    -- nil (absent: unknown, not compared) stays apart from null (a value), as `in` does in Python.
    rows[#rows + 1] = {user, c.name, c.metadata, c.email}
  elseif bind then
    -- No external id (Checkout made it): the user whose email it is, if intake or import saw it.
    local found = redis.call('HGET', KEYS[6], string.lower(c.email))
    if found then unbound[#unbound + 1] = {found, c.email} end
  end
end

if ARGV[7] ~= '' then
  if #ARGV > 7 then redis.call('HSET', KEYS[2], unpack(ARGV, 8)) end
  redis.call('SET', KEYS[3], ARGV[7])
end

-- Deep equality of decoded JSON (tables compared key by key, both ways).
local function same(a, b)
  if a == b then return true end
  if type(a) ~= 'table' or type(b) ~= 'table' then return false end
  for k, v in pairs(a) do
    if not same(v, b[k]) then return false end
  end
  for k in pairs(b) do
    if a[k] == nil then return false end
  end
  return true
end

-- Python's falsiness, which `metadata or {}` relies on: all of these mean "no metadata".
local function blank(v)
  return v == null or v == false or v == 0 or v == ''
    or (type(v) == 'table' and next(v) == nil)
end

local ids, unknown, emails, drifted = {}, {}, {}, {}
local compared_name, compared_metadata = 0, 0
for i, row in ipairs(rows) do
  local user = row[1]
  ids[i] = user
  local packed = ledger_get(ledger_bucket(user), user)
  if not packed then
    unknown[#unknown + 1] = user
  else
    local email = ledger_field(packed, 'email')
    if email then
      -- string.lower is ASCII-only: a mismatch in non-ASCII case is reported (never repaired).
      local want = decode(email)
      if type(want) ~= 'string' or string.lower(want) ~= string.lower(row[4]) then
        emails[#emails + 1] = user
      end
    end
    local out, fields = {user, 0}, {}
    local name, name_ts = ledger_field(packed, 'name')
    if name and row[2] ~= nil then
      compared_name = compared_name + 1
      if not same(decode(name), row[2]) then
        out[#out + 1] = 'name'
        out[#out + 1] = name
        out[#out + 1] = name_ts
        fields.name = {name, tonumber(name_ts)}
      end
    end
    local metadata, metadata_ts = ledger_field(packed, 'metadata')
    if metadata and row[3] ~= nil then
      compared_metadata = compared_metadata + 1
      local want, have = decode(metadata), row[3]
      local differs
      if blank(want) or blank(have) then
        differs = blank(want) ~= blank(have)
      else
        differs = not same(want, have)
      end
      if differs then
        out[#out + 1] = 'metadata'
        out[#out + 1] = metadata
        out[#out + 1] = metadata_ts
        fields.metadata = {metadata, tonumber(metadata_ts)}
      end
    end
    if #out > 2 then
      out[2] = restore(ARGV[3] .. user, ledger_unpack(packed), KEYS[4], KEYS[5], user, ARGV[4],
                       fields, '', repair)
      drifted[#drifted + 1] = out
    end
  end
end
-- A bindable user's ledger fields go back to the pending store, due now: the sync path's 404
-- by external id then binds the customer by email (read_back.py). Only when the ledger's email
-- is the customer's exactly (that lookup is exact), the user was not moved to another external
-- id by us, and there is something to send.
local binds = {}
for _, pair in ipairs(unbound) do
  local user = pair[1]
  local entry = ledger_load(ledger_bucket(user), user) or {f = {}}
  local f = entry.f
  local email = f.email and decode(f.email[1])
  local moved = f.external_id and decode(f.external_id[1]) ~= user
  if type(email) == 'string' and email == pair[2] and not moved and (f.name or f.metadata) then
    local fields = {email = {f.email[1], tonumber(f.email[2])}}
    if f.name then fields.name = {f.name[1], tonumber(f.name[2])} end
    if f.metadata then fields.metadata = {f.metadata[1], tonumber(f.metadata[2])} end
    local merged = restore(ARGV[3] .. user, entry, KEYS[4], KEYS[5], user, ARGV[4], fields, '',
                           repair)
    binds[#binds + 1] = {user, merged}
    ids[#ids + 1] = user  -- in Recur, unbound: not missing
  end
end
if #ids > 0 then
  redis.call('SADD', KEYS[1], unpack(ids))
  redis.call('EXPIRE', KEYS[1], ARGV[2])
end
return {#page.data, #rows, unknown, emails, drifted, compared_name, compared_metadata, binds}
