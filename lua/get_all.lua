#!lua flags=no-writes
-- get_all: the valid cached merged configs of several names of one user, and a fill token
-- for the rest (get.lua reads one name). The names are given, or those of them the
-- catalogue holds, or every name of the catalogue.
--
-- KEYS[1]    p:seq     invalidation sequence (hash; n = current)
-- KEYS[2]    p:names   the catalogue: every registered config name (a set, encoded)
-- ARGV[1]    the key prefix p (entry and stamp keys are built from it)
-- ARGV[2]    the user id
-- ARGV[3]    the required encoded domain: an entry filled under another domain is a
--            miss; "" serves an entry of any domain
-- ARGV[4]    what to read: "names" (the names that follow), "registered" (those of the
--            names that follow that the catalogue holds) or "catalogue" (its every name)
-- ARGV[5]    "1" when the caller keeps copies (a local cache): reply each served entry's
--            remaining life and, with "registered", the catalogue itself; "0" otherwise
-- ARGV[6..]  encoded names ("names" and "registered")
--
-- Reply (a miss is nil in the reply: false here, since a Lua array ends at its first nil):
--   {token, values, pttls}            "names"; "registered" when no catalogue is cached
--   {token, values, pttls, registered, catalogue_pttl, catalogue}
--                                     "registered" and "catalogue"
--   {token}                           "catalogue" when no catalogue is cached
-- where, per name read (for "catalogue", the catalogue's names in its order):
--   token    "n:ms": the sequence and the server clock now; a caller that fills a miss
--            passes it back to set.lua. n is 0 when no sequence exists (set.lua refuses
--            it). "" when every registered name was served: no fill follows
--   values   the JSON of a valid entry; nil when absent, not registered, no longer valid
--            or filled under another domain than the required one; 0 when the key holds
--            something undecodable (the caller removes it)
--   pttls    the served entry's remaining life in ms (a local copy must not outlive it)
--            when ARGV[5] is "1"; 0 otherwise and for a value not served
--   registered  1 if the catalogue holds the name, 0 if not (its value is not read)
--   catalogue_pttl  the catalogue's remaining life in ms (-1: it has no expiry)
--   catalogue   the catalogue's names ("catalogue", or "registered" with ARGV[5] "1");
--            empty otherwise
--
-- Validity as in get.lua: the required domain, if any, is the entry's; no stamp covering
-- the entry is newer than its fill token; public "*" exists (every life of the index
-- begins by writing it).
-- Read-only (no-writes), so EVALSHA_RO may serve it from a replica.

local prefix, user, required, mode = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local keeps = ARGV[5] == '1'

-- "n:ms": the sequence now and the server clock (set.lua refuses tokens that are too old).
local function fill_token()
  local n = tonumber(redis.call('HGET', KEYS[1], 'n')) or 0
  local now = redis.call('TIME')
  return string.format('%d:%d', n, now[1] * 1000 + math.floor(now[2] / 1000))
end

local names, registered, catalogue = {}, nil, {}
if mode == 'catalogue' then
  names = redis.pcall('SMEMBERS', KEYS[2])
  if names.err or #names == 0 then return { fill_token() } end
  catalogue, registered = names, {}
  for i = 1, #names do registered[i] = 1 end
else
  for i = 6, #ARGV do names[#names + 1] = ARGV[i] end
  if mode == 'registered' and #names > 0 and redis.call('EXISTS', KEYS[2]) == 1 then
    registered = redis.pcall('SMISMEMBER', KEYS[2], unpack(names))
    if registered.err then registered = nil end  -- not a set: as if none were cached
    if registered and keeps then catalogue = redis.call('SMEMBERS', KEYS[2]) end
  end
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
local missed = false
for i, name in ipairs(names) do
  values[i], pttls[i] = false, 0
  if registered == nil or registered[i] == 1 then
    local key = prefix .. ':merged:' .. user .. ':' .. name
    local raw = redis.pcall('GET', key)
    values[i] = raw and valid(raw, name)
    if values[i] and values[i] ~= 0 then
      if keeps then pttls[i] = redis.call('PTTL', key) end
    else
      missed = true
    end
  end
end
-- The clock is read only when a fill may follow (or when nothing was asked: a probe).
local token = (missed or #names == 0) and fill_token() or ''
if registered == nil then return { token, values, pttls } end
return { token, values, pttls, registered, redis.call('PTTL', KEYS[2]), catalogue }
