#!lua flags=no-writes
-- get: the cached merged config of one user and name, if still valid, or a fill token.
-- The hot path of every cached read: one entry, straight-line (get_all.lua reads several).
--
-- KEYS[1]    p:seq     invalidation sequence (hash; n = current)
-- ARGV[1]    the key prefix p (entry and stamp keys are built from it)
-- ARGV[2]    the user id
-- ARGV[3]    the required encoded domain: an entry filled under another domain is a
--            miss; "" serves an entry of any domain
-- ARGV[4]    the encoded name
--
-- Reply: {"", json, pttl} on a hit, pttl the entry's remaining life in ms (a local copy
--        must not outlive it); {token, nil} on a miss, when the entry is no longer
--        valid, or when it was filled under another domain than the required one;
--        {token, 0} when the key holds something undecodable (the caller removes
--        it). token = "n:ms": the sequence and the server clock, which the caller passes
--        back to set.lua to fill the miss (n is 0 when no sequence exists; refused).
--
-- An entry "t d\n{json}" (fill token t, encoded domain d at fill time) is served only to
-- a caller that requires d or no domain, and is valid only if no stamp that covers it is
-- newer than t: public, domain d and user, each for "*" and for the name. A new life of the index stamps public "*" with its first value, which
-- covers every entry of the old one (DESIGN §2); an index without that stamp was lost.
-- Read-only (no-writes): EVALSHA_RO.

local prefix, user, required, name = ARGV[1], ARGV[2], ARGV[3], ARGV[4]

local function miss(value)
  local n = tonumber(redis.call('HGET', KEYS[1], 'n')) or 0
  local now = redis.call('TIME')
  return { string.format('%d:%d', n, now[1] * 1000 + math.floor(now[2] / 1000)), value }
end

-- Whether a stamp hash holds a stamp newer than t for "*" or the name. A key that is not
-- a hash, or a stamp that is not a number (written by someone else), covers everything;
-- so does a missing public "*": every life of the index begins by writing it, so
-- without it the index was lost, and nothing it left behind is trusted.
local function covered(key, t)
  local stamps = redis.pcall('HMGET', key, '*', name)
  if stamps.err then return true end
  if key == prefix .. ':stamp:public' and not stamps[1] then return true end
  for i = 1, 2 do
    if stamps[i] and (tonumber(stamps[i]) or math.huge) > t then return true end
  end
  return false
end

local key = prefix .. ':merged:' .. user .. ':' .. name
local raw = redis.pcall('GET', key)
if not raw then return miss(false) end
if type(raw) ~= 'string' then return miss(0) end  -- WRONGTYPE
local t, domain, body = string.match(raw, '^(%d+) ([^\n]+)\n()')
t = tonumber(t)
if t == nil then return miss(0) end
if required ~= '' and domain ~= required then return miss(false) end
if covered(prefix .. ':stamp:public', t) or covered(prefix .. ':stamp:domain:' .. domain, t)
    or covered(prefix .. ':stamp:user:' .. user, t) then
  return miss(false)
end
return { '', string.sub(raw, body), redis.call('PTTL', key) }
