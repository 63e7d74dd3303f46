#!lua flags=allow-oom
-- invalidate: make every entry a list of targets covers unservable, in O(targets) (the
-- stamps: lua/README.md); delete what is cheap to reach, and queue the rest in p:gc.
--
-- KEYS[1]    p:seq     invalidation sequence: n, and ttl, the longest entry TTL written
-- KEYS[2]    p:names   the catalogue of config names (see get.lua)
-- KEYS[3]    p:gc      the clean-up queue (jobs: lua/README.md)
-- ARGV[1]    the key prefix p; other keys are built from it (one hash tag on a cluster)
-- ARGV[2]    the shortest a stamp may live, ms (the caller's TTL + the fill token age)
-- ARGV[3]    how old a fill token may be, ms (added to the longest TTL written)
-- ARGV[4]    budget: how many entries this call may examine while deleting
-- ARGV[5]    "1" to drop the catalogue too (a policy was created or deleted), else "0";
--            then, after a space, the command that announces the call ("PUBLISH", or
--            "SPUBLISH" on a cluster), if it is to be announced
-- ARGV[6..]  targets, each: scope, id, count, then `count` encoded names (a call carries
--            at most a few hundred targets, a few thousand values: MAX_TARGETS_PER_CALL)
--              scope "user"    id = user id
--              scope "domain"  id = encoded domain name   (DOMAIN, DOMAIN_USER_DEFAULTS)
--              scope "public"  id = "public"
--            count -1 means every name of that scope; otherwise only the names given.
--
-- Reply: {entries deleted by this call, clean-up jobs queued, the sequence n now, reset}
--        n only moves forward on one server (a new life starts above it and the clock):
--        a caller that sees it go back knows a failover lost writes. reset: 1 when a key
--        of another type (someone else's) blocks the call, as it would every replay; the
--        caller then starts a new life of the index (reset.lua) before it returns.
--
-- While the budget lasts, this call deletes what its user targets cover, and its domain
-- or public targets whose index lists few users; the rest becomes jobs of p:gc. It is
-- announced as lua/README.md states. allow-oom: an invalidation only frees memory, and
-- must run on a full server. No `unpack` of ARGV (Lua's stack holds ~8,000 values).

local prefix, budget = ARGV[1], tonumber(ARGV[4])
local drop_catalogue, announce = string.match(ARGV[5], '^([01]) ?(%u*)$')
if announce ~= '' and announce ~= 'PUBLISH' and announce ~= 'SPUBLISH' then
  return redis.error_reply('ERR ARGV[5] must be "0" or "1", then PUBLISH or SPUBLISH: ' .. ARGV[5])
end
local targets, i = {}, 6
while i <= #ARGV do
  local scope, count = ARGV[i], tonumber(ARGV[i + 2])
  if scope ~= 'user' and scope ~= 'domain' and scope ~= 'public' then
    return redis.error_reply('ERR unknown invalidation scope: ' .. scope)
  end
  local names = count >= 0 and {} or nil  -- nil: every name
  for j = 1, count do names[j] = ARGV[i + 2 + j] end
  targets[#targets + 1] = { scope = scope, id = ARGV[i + 1], names = names }
  i = i + 3 + math.max(count, 0)
end

local seq_key, catalogue_key, queue_key = KEYS[1], KEYS[2], KEYS[3]
local users_index, public_stamps = prefix .. ':idx:users', prefix .. ':stamp:public'
local queue_type = redis.call('TYPE', queue_key)['ok']
local ok, seq = pcall(redis.call, 'HMGET', seq_key, 'n', 'ttl')
local life_ok, life = pcall(redis.call, 'HGET', public_stamps, '*')
if not (ok and life_ok and (queue_type == 'none' or queue_type == 'list')) then
  return { 0, 0, 0, 1 }
end
local new_life = not seq[1] or not life
if new_life then  -- no index yet, or it was lost: a new life, as in set.lua
  local clock = redis.call('TIME')
  local first = math.max(clock[1] * 1000000 + clock[2], (tonumber(seq[1]) or 0) + 1)
  redis.call('HSET', seq_key, 'n', string.format('%d', first))
  redis.call('HSET', public_stamps, '*', string.format('%d', first))
end
local n = string.format('%d', redis.call('HINCRBY', seq_key, 'n', 1))
local ttl = math.max(tonumber(ARGV[2]), (tonumber(seq[2]) or 0) + tonumber(ARGV[3]))
local deleted, examined, corrupt = 0, 0, false

local function stamp(key, fields, expires)  -- false when the key holds another type
  for _, field in ipairs(fields) do
    if type(redis.pcall('HSET', key, field, n)) == 'table' then return false end
  end
  if expires and redis.call('PTTL', key) < ttl then redis.call('PEXPIRE', key, ttl) end
  return true
end

-- Delete the entries of `user` a target covers, as reclaim.lua's sweep_user does, but
-- every one: each was filled before this call, so each is older than its stamp.
local function clean_user(user, names, domain)
  local index = prefix .. ':idx:user:' .. user
  local ok, listed = pcall(redis.call, 'ZRANGE', index, 0, -1)
  if not ok then corrupt = true return end
  local domains = {}
  for _, name in ipairs(names or listed) do
    local key = prefix .. ':merged:' .. user .. ':' .. name
    local raw = redis.pcall('GET', key)
    local d = type(raw) == 'string' and string.match(raw, '^%d+ ([^\n]+)\n') or nil
    if d then domains[d] = true end
    if raw and (d == nil or domain == nil or d == domain) then
      deleted = deleted + redis.call('UNLINK', key)
      raw = false
    end
    if not raw then redis.call('ZREM', index, name) end
  end
  examined = examined + #(names or listed) + 1
  if redis.call('EXISTS', index) == 0 then
    if type(redis.pcall('ZREM', users_index, user)) == 'table' then corrupt = true end
    if domain then domains[domain] = true end
    for d in pairs(domains) do redis.pcall('ZREM', prefix .. ':idx:domain:' .. d, user) end
  end
end

-- Clean up after each target while the budget lasts; what is left becomes its job: the
-- whole target (cursor "0") if its index lists too many users, else the users not reached.
local function clean_up()
  for _, target in ipairs(targets) do
    local scope, id, names = target.scope, target.id, target.names
    local users, cursor, domain = { id }, 'end', nil
    if scope ~= 'user' then
      local index = scope == 'domain' and prefix .. ':idx:domain:' .. id or users_index
      local ok, count = pcall(redis.call, 'ZCARD', index)
      if not ok then corrupt = true return end
      examined = examined + 1
      users, cursor, domain = {}, '0', scope == 'domain' and id or nil
      if count < budget - examined then
        users, cursor = redis.call('ZRANGE', index, 0, -1), 'end'
      end
    end
    while #users > 0 and examined < budget and not corrupt do
      clean_user(table.remove(users), names, domain)
    end
    if corrupt then return end
    if cursor == '0' or #users > 0 then
      local listed = names and table.concat(names, ',') or '*'
      local job = { scope, id, n, cursor, listed, table.concat(users, ',') }
      redis.call('LPUSH', queue_key, table.concat(job, '\t'))
    end
  end
end

if drop_catalogue == '1' then redis.call('UNLINK', catalogue_key) end
local stamped = drop_catalogue == '0' or stamp(public_stamps, { '#names' }, false)
for _, target in ipairs(targets) do
  local key = target.scope == 'public' and public_stamps
    or prefix .. ':stamp:' .. target.scope .. ':' .. target.id
  stamped = stamp(key, target.names or { '*' }, target.scope ~= 'public') and stamped
end
if stamped then clean_up() else corrupt = true end

local queued = redis.call('LLEN', queue_key)
if queued > 0 and redis.call('PTTL', queue_key) < ttl then
  redis.call('PEXPIRE', queue_key, ttl)  -- jobs outlive every entry they could find
end
if announce ~= '' then
  local words = { n, new_life and '1' or '0', drop_catalogue }
  for j = 6, #ARGV do words[#words + 1] = ARGV[j] end
  redis.call(announce, prefix .. ':invalidations', table.concat(words, ' '))
end
return { deleted, queued, tonumber(n), corrupt and 1 or 0 }
