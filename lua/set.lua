-- set: store merged configs of one user with their TTL and their memberships in the
-- index, in one atomic step; refuse a fill that an invalidation covering it overtook.
--
-- KEYS[1]    p:seq     invalidation sequence: hash of n and ttl (the longest entry TTL
--                      ever written, ms: stamps outlive it)
-- KEYS[2]    p:names   the catalogue of config names (see get.lua)
-- ARGV[1]    the key prefix p
-- ARGV[2]    TTL in milliseconds (positive integer)
-- ARGV[3]    the user id
-- ARGV[4]    the user's encoded domain at fill time
-- ARGV[5]    the fill token get.lua returned ("n:ms"), or "" to write unconditionally
-- ARGV[6]    how old a fill token may be, in ms (stamps live at least this long)
-- ARGV[7]    the command that announces a new life of the index on p:invalidations
--            ("PUBLISH", "SPUBLISH" on a cluster, or "" for none), as invalidate.lua does
-- ARGV[8]    c: how many catalogue names follow (-1: leave the catalogue alone)
-- ARGV[9..]  c catalogue names (replace the catalogue), then pairs: encoded name, JSON
--            (none: the catalogue alone is written)
--
-- Reply: 1 when written, 0 when refused (nothing written). A fill is refused when its
-- token is older than any stamp that covers one of its entries (or the catalogue, when
-- it replaces it; a token of a lost life of the index is older than its life stamp,
-- public "*"), from a sequence the server never reached, or older than ARGV[6]. Other
-- users, domains and names never refuse it.

local prefix, ttl, user, domain = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4]
local announce = ARGV[7]
if announce ~= '' and announce ~= 'PUBLISH' and announce ~= 'SPUBLISH' then
  return redis.error_reply('ERR ARGV[7] must be "", PUBLISH or SPUBLISH: ' .. announce)
end
local catalogue_size = tonumber(ARGV[8])
local first_pair = 9 + math.max(catalogue_size, 0)
local clock = redis.call('TIME')
local now = clock[1] * 1000 + math.floor(clock[2] / 1000)

local seq = redis.call('HMGET', KEYS[1], 'n', 'ttl')
local current = tonumber(seq[1])
local public_stamps = prefix .. ':stamp:public'
if current == nil or not redis.call('HGET', public_stamps, '*') then
  -- No index, or it lost its life stamp (first use, restart without persistence,
  -- FLUSHALL): a new life starts at the server clock in µs, above the old sequence, and
  -- stamps public "*" with its first value. That stamp covers every entry and refuses
  -- every token of the lost life, as any newer stamp would.
  current = math.max(clock[1] * 1000000 + clock[2], (current or 0) + 1)
  local first = string.format('%d', current)
  redis.call('HSET', KEYS[1], 'n', first)
  redis.call('HSET', public_stamps, '*', first)
  -- Local caches empty themselves on it ("n 1 0": a new life, no catalogue flag, no
  -- targets) rather than find the sequence ahead at their next check.
  if announce ~= '' then
    redis.call(announce, prefix .. ':invalidations', first .. ' 1 0')
  end
end

local t = current
if ARGV[5] ~= '' then
  local n, issued = string.match(ARGV[5], '^(%d+):(%d+)$')
  t, issued = tonumber(n), tonumber(issued)
  if t == nil or t > current or now - issued > tonumber(ARGV[6]) then
    return 0
  end
  local function newest(key, name)
    local fields = redis.call('HMGET', key, '*', name)
    return math.max(tonumber(fields[1]) or 0, tonumber(fields[2]) or 0)
  end
  local user_stamps = prefix .. ':stamp:user:' .. user
  local domain_stamps = prefix .. ':stamp:domain:' .. domain
  for i = first_pair, #ARGV, 2 do
    local name = ARGV[i]
    if newest(public_stamps, name) > t or newest(domain_stamps, name) > t
        or newest(user_stamps, name) > t then
      return 0
    end
  end
  if catalogue_size >= 0 and newest(public_stamps, '#names') > t then return 0 end
end

if ttl > (tonumber(seq[2]) or 0) then redis.call('HSET', KEYS[1], 'ttl', ARGV[2]) end

if catalogue_size >= 0 then
  redis.call('DEL', KEYS[2])
  for i = 9, 8 + catalogue_size do redis.call('SADD', KEYS[2], ARGV[i]) end
  redis.call('PEXPIRE', KEYS[2], ttl)
end

-- The index: sorted sets scored by expiry (ms), so that members leave with their
-- entries. A key lives as long as its longest-lived member (refresh, never shorten),
-- and each write prunes a bounded number of expired members: bounded work, and an
-- index that follows the live entries, not every user ever cached.
local expiry = now + ttl
local function refresh_and_prune(key)
  if redis.call('PTTL', key) < ttl then redis.call('PEXPIRE', key, ttl) end
  local expired = redis.call('ZRANGEBYSCORE', key, '-inf', now, 'LIMIT', 0, 32)
  if #expired > 0 then redis.call('ZREM', key, unpack(expired)) end
end
if first_pair > #ARGV then return 1 end  -- the catalogue alone
local user_index = prefix .. ':idx:user:' .. user
for i = first_pair, #ARGV, 2 do redis.call('ZADD', user_index, 'GT', expiry, ARGV[i]) end
refresh_and_prune(user_index)
for _, key in ipairs({ prefix .. ':idx:domain:' .. domain, prefix .. ':idx:users' }) do
  redis.call('ZADD', key, 'GT', expiry, user)
  refresh_and_prune(key)
end

-- Values last: if a command above fails (OOM, WRONGTYPE), no value exists without the
-- memberships that let an invalidation find it.
local header = string.format('%d', t) .. ' ' .. domain .. '\n'
for i = first_pair, #ARGV, 2 do
  local key = prefix .. ':merged:' .. user .. ':' .. ARGV[i]
  redis.call('SET', key, header .. ARGV[i + 1], 'PX', ttl)
end
return 1
