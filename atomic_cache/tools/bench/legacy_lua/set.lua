-- set: store merged configs of one user with their TTL and every membership that can
-- later invalidate them, in one atomic step; refuse a fill that raced an invalidation.
--
-- KEYS[1]      p:user:{user}:names      set of names cached for the user
-- KEYS[2]      p:domain:{domain}:users  set of users cached, by domain at fill time
-- KEYS[3]      p:users                  set of every user with an entry
-- KEYS[4]      p:epoch                  invalidation counter
-- KEYS[5]      p:names                  the catalogue of config names (see get_all.lua)
-- KEYS[6..]    pairs: p:merged:{user}:{name}, p:name:{name}:users   (one pair per entry)
-- ARGV[1]      TTL in seconds (positive integer)
-- ARGV[2]      the user id, as stored in the sets
-- ARGV[3]      "1" when ARGV[4] is a fill token that must still be current, else "0"
-- ARGV[4]      the fill token get.lua returned ("" means: no epoch existed then)
-- ARGV[5]      c: how many catalogue names follow (-1: leave the catalogue alone)
-- ARGV[6..]    c catalogue names (replace the catalogue), then pairs: encoded name,
--              value (same order as the key pairs)
--
-- Reply: 1 when written, 0 when the fill token is stale (nothing written).

if ARGV[3] == '1' and (redis.call('GET', KEYS[4]) or '') ~= ARGV[4] then
  return 0
end

local ttl = tonumber(ARGV[1])
local user = ARGV[2]
local catalogue_size = tonumber(ARGV[5])

-- Refresh, never shorten: a set must outlive the longest-lived entry it indexes.
-- TTL answers -1 for a set without expiry and -2 for a missing one; both are < ttl.
local function index(set_key, member)
  redis.call('SADD', set_key, member)
  if redis.call('TTL', set_key) < ttl then
    redis.call('EXPIRE', set_key, ttl)
  end
end

if catalogue_size >= 0 then
  redis.call('DEL', KEYS[5])
  for i = 6, 5 + catalogue_size do
    redis.call('SADD', KEYS[5], ARGV[i])
  end
  redis.call('EXPIRE', KEYS[5], ttl)
end

-- Memberships first, values last: if a command fails half-way (OOM, WRONGTYPE),
-- no value exists without the sets that can invalidate it.
local first_pair = 6 + math.max(catalogue_size, 0)
index(KEYS[2], user)
index(KEYS[3], user)
local arg = first_pair
for key = 6, #KEYS, 2 do
  index(KEYS[1], ARGV[arg])
  index(KEYS[key + 1], user)
  arg = arg + 2
end
arg = first_pair
for key = 6, #KEYS, 2 do
  redis.call('SET', KEYS[key], ARGV[arg + 1], 'EX', ttl)
  arg = arg + 2
end
return 1
