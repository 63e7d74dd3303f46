#!lua flags=no-writes
-- get_all: the valid cached merged configs of several names of one user, or of every
-- name of the catalogue, and a fill token for the rest (get.lua reads one name).
--
-- KEYS[1]    p:seq     invalidation sequence (hash; n = current)
-- KEYS[2]    p:names   the catalogue: every config name that has a policy (encoded)
-- ARGV[1]    the key prefix p (entry and stamp keys are built from it)
-- ARGV[2]    the user id
-- ARGV[3]    the required encoded domain: an entry filled under another domain is a
--            miss; "" serves an entry of any domain
-- ARGV[4]    c: how many encoded names follow, or -1 for every name of the catalogue
-- ARGV[5..]  c encoded names
--
-- Reply (a miss is nil in the reply: false here, since a Lua array ends at its first nil):
--        {token, values, pttls}, or with c = -1 {token, values, pttls, names, names_pttl},
--        or {token} when the catalogue is not cached
--   token    "n:ms": the sequence and the server clock now; a caller that fills a miss
--            passes it back to set.lua. n is 0 when no sequence exists (set.lua refuses
--            it). "" when every name was served: no fill follows
--   values   per name: the JSON of a valid entry; nil when absent, no longer valid or
--            filled under another domain than the required one;
--            0 when the key holds something undecodable (the caller removes it)
--   pttls    per name: the served entry's remaining life in ms (a local copy must not
--            outlive it); 0 for a value not served
--   names    the catalogue's encoded names, in the order of values
--   names_pttl  the catalogue's remaining life in ms (-1: it has no expiry)
--
-- Validity as in get.lua: the required domain, if any, is the entry's; no stamp covering
-- the entry is newer than its fill token; public "*" exists (every life of the index
-- begins by writing it).
-- Read-only (no-writes), so EVALSHA_RO may serve it from a replica.

local prefix, user, required = ARGV[1], ARGV[2], ARGV[3]

-- "n:ms": the sequence now and the server clock (set.lua refuses tokens that are too old).
local function fill_token()
  local n = tonumber(redis.call('HGET', KEYS[1], 'n')) or 0
  local now = redis.call('TIME')
  return string.format('%d:%d', n, now[1] * 1000 + math.floor(now[2] / 1000))
end

local names = {}
local count = tonumber(ARGV[4])
if count < 0 then
  names = redis.pcall('SMEMBERS', KEYS[2])
  if names.err or #names == 0 then return { fill_token() } end
else
  for i = 1, count do names[i] = ARGV[4 + i] end
end

-- A stamp's sequence; a value that is not a number covers everything.
local function stamp(value)
  if not value then return 0 end
  return tonumber(value) or math.huge
end

-- The newest stamp of a hash for a name: its "*" and its name field; each hash is read
-- once per call. A key that is not a hash (written by someone else) covers everything:
-- nothing under it is served.
local stamps = {}
local function newest(key, name)
  local fields = stamps[key]
  if fields == nil then
    fields = {}
    local flat = redis.pcall('HGETALL', key)
    if flat.err then
      fields['*'] = math.huge
    else
      for i = 1, #flat, 2 do fields[flat[i]] = stamp(flat[i + 1]) end
    end
    if key == prefix .. ':stamp:public' and fields['*'] == nil then fields['*'] = math.huge end
    stamps[key] = fields
  end
  return math.max(fields['*'] or 0, fields[name] or 0)
end

local function valid(raw, name)
  if type(raw) ~= 'string' then return 0 end  -- WRONGTYPE: another type under the key
  local t, domain, body = string.match(raw, '^(%d+) ([^\n]+)\n()')
  t = tonumber(t)
  if t == nil then return 0 end
  if required ~= '' and domain ~= required then return false end
  if newest(prefix .. ':stamp:public', name) > t
      or newest(prefix .. ':stamp:domain:' .. domain, name) > t
      or newest(prefix .. ':stamp:user:' .. user, name) > t then
    return false
  end
  return string.sub(raw, body)
end

local values, pttls = {}, {}
local missed = #names == 0
for i, name in ipairs(names) do
  local key = prefix .. ':merged:' .. user .. ':' .. name
  local raw = redis.pcall('GET', key)
  values[i] = raw and valid(raw, name)
  pttls[i] = 0
  if values[i] and values[i] ~= 0 then
    pttls[i] = redis.call('PTTL', key)
  else
    missed = true
  end
end
-- The clock is read only when a fill may follow.
local token = missed and fill_token() or ''
if count < 0 then return { token, values, pttls, names, redis.call('PTTL', KEYS[2]) } end
return { token, values, pttls }
