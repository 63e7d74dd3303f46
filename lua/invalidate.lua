#!lua flags=allow-oom
-- invalidate: make every entry a list of targets covers unservable, in O(targets), then
-- spend a bounded budget deleting covered entries through the index.
--
-- KEYS[1]    p:seq     invalidation sequence (see set.lua)
-- KEYS[2]    p:names   the catalogue of config names (see get.lua)
-- KEYS[3]    p:gc      clean-up queue: one job per large target, resumable by any caller
-- ARGV[1]    the key prefix p; other keys are built from it (one hash tag on a cluster)
-- ARGV[2]    the shortest a stamp may live, ms (the caller's TTL + the fill token age)
-- ARGV[3]    how old a fill token may be, ms (added to the longest TTL written)
-- ARGV[4]    budget: how many entries this call may examine while cleaning up
-- ARGV[5]    "1" to drop the catalogue too (a policy was created or deleted), else "0";
--            then, after a space, the command that announces the call ("PUBLISH", or
--            "SPUBLISH" on a cluster), if it is to be announced (see the end)
-- ARGV[6..]  targets, each: scope, id, count, then `count` encoded names (the caller
--            splits a large invalidation into calls of at most a few hundred targets
--            and a few thousand values: cache/source.py, MAX_TARGETS_PER_CALL)
--              scope "user"    id = user id
--              scope "domain"  id = encoded domain name   (DOMAIN, DOMAIN_USER_DEFAULTS)
--              scope "public"  id = "public"
--              scope "reset"   id ignored: start a new life of the index (see below)
--            count -1 means every name of that scope; otherwise only the names given.
--            No target and "0": a clean-up step only, no new stamp.
--
-- Reply: {entries deleted by this call, clean-up jobs still queued, the sequence n now}
--        The sequence only moves forward on one server (a new life starts above it and
--        the clock); the caller that sees it go back knows a failover lost writes.
--
-- Announcement: a call that moved the sequence publishes, on channel "p:invalidations"
-- (the prefix's slot on a cluster), "n life catalogue targets...": the sequence now, "1"
-- if this call started a new life of the index (else "0"), ARGV[5]'s catalogue flag,
-- then ARGV[6..] as given. Local caches in every process drop what it covers; one that
-- sees a number other than the next one flushes (cache/local.py).
--
-- The logical step: n += 1, and each target's stamp (field "*" or its names) := n. From
-- then on get.lua serves no entry it covers and set.lua refuses every fill whose token
-- is older. Deleting the entries only frees memory: user targets are cleaned here while
-- the budget lasts (a user has few names), the rest become one job that sweeps them in
-- steps; a domain or public target becomes a job that walks its index in steps (ZSCAN),
-- deleting entries older than the stamp. Any call continues the queue.
--
-- No `unpack` of the arguments or of a list that grows with them: Lua's stack holds
-- about 8,000 values, and a call that fails after stamping is reported failed.
--
-- allow-oom: an invalidation only frees memory, and must still run when a full server
-- refuses writes (maxmemory + noeviction); skipping it would leave stale entries.
--
-- A key of another type where a stamp, the sequence or the queue belongs (written by
-- someone else) would make the stamp unwritable. Rather than fail (and fail again on
-- every replay), the call then resets: a new life of the index refuses every entry and
-- token of the old one, whatever the keys say, and a sweep job removes what is left.

local prefix, budget = ARGV[1], tonumber(ARGV[4])
local drop_catalogue, announce = string.match(ARGV[5], '^([01]) ?(%u*)$')
if announce ~= '' and announce ~= 'PUBLISH' and announce ~= 'SPUBLISH' then
  return redis.error_reply('ERR ARGV[5] must be "0" or "1", then PUBLISH or SPUBLISH: ' .. ARGV[5])
end
local moved, new_life = false, false  -- what the announcement says
local seq_key, catalogue_key, queue_key = KEYS[1], KEYS[2], KEYS[3]
local clock = redis.call('TIME')
local now_us = clock[1] * 1000000 + clock[2]
local deleted, examined = 0, 0
local corrupt = false  -- an index key of another type met while cleaning up

local function entry_key(user, name) return prefix .. ':merged:' .. user .. ':' .. name end
local function user_index(user) return prefix .. ':idx:user:' .. user end
local function domain_index(domain) return prefix .. ':idx:domain:' .. domain end
local users_index = prefix .. ':idx:users'
local function stamps_key(scope, id)
  if scope == 'public' then return prefix .. ':stamp:public' end
  return prefix .. ':stamp:' .. scope .. ':' .. id
end

-- The fill token and domain in an entry's header (nil for anything undecodable).
local function header(raw)
  if type(raw) ~= 'string' then return nil end
  local t, domain = string.match(raw, '^(%d+) ([^\n]+)\n')
  return tonumber(t), domain
end

-- Call `command` on slices of at most 1,000 items of `items` (Lua's stack bounds an
-- unpack); returns the sum of its replies.
local function each_slice(items, command)
  local total = 0
  for first = 1, #items, 1000 do
    total = total + command({ unpack(items, first, math.min(first + 999, #items)) })
  end
  return total
end

-- Delete the entries of `user` (the names given, or all in its index) that a stamp of
-- value `s` covers: older than it and, for a domain target, filled under that domain.
-- Index members of entries that are gone are removed; a user left with no entry leaves
-- the user index and the domain indexes its entries named.
local function sweep_user(user, names, s, domain)
  local index = user_index(user)
  local ok, listed = pcall(redis.call, 'ZRANGE', index, 0, -1)
  if not ok then
    corrupt = true
    listed = {}
  end
  local stale, gone, domains = {}, {}, {}
  for _, name in ipairs(names or listed) do
    local key = entry_key(user, name)
    local raw = redis.pcall('GET', key)
    local t, d = header(raw)
    if d then domains[d] = true end
    if raw and (t == nil or (t < s and (domain == nil or d == domain))) then
      stale[#stale + 1] = key
      raw = false
    end
    if not raw then gone[#gone + 1] = name end
  end
  examined = examined + #(names or listed) + 1
  deleted = deleted + each_slice(stale, function(part)
    return redis.call('UNLINK', unpack(part))
  end)
  if ok then
    each_slice(gone, function(part) return redis.call('ZREM', index, unpack(part)) end)
  end
  if ok and redis.call('EXISTS', index) == 0 then
    redis.call('ZREM', users_index, user)
    if domain then domains[domain] = true end
    for d in pairs(domains) do redis.pcall('ZREM', domain_index(d), user) end
  end
end

-- A sweep (after a reset) deletes keys of this schema's shapes that hold another type,
-- and entries older than the new life. Components never hold ':' and user ids are
-- UUIDs, so a longer prefix that shares the start ("p:tenant2", "p:merged", "p:idx")
-- is left alone.
local uuid = '%x+%-%x+%-%x+%-%x+%-%x+'
local shapes = {
  { '^merged:' .. uuid .. ':[^:]+$', 'string' }, { '^idx:user:' .. uuid .. '$', 'zset' },
  { '^idx:domain:[^:]+$', 'zset' }, { '^idx:users$', 'zset' },
  { '^stamp:user:' .. uuid .. '$', 'hash' }, { '^stamp:domain:[^:]+$', 'hash' },
  { '^stamp:public$', 'hash' }, { '^names$', 'set' }, { '^seq$', 'hash' }, { '^gc$', 'list' },
}
local function sweep_key(key, born)
  local rest = string.sub(key, #prefix + 2)
  for _, shape in ipairs(shapes) do
    if string.find(rest, shape[1]) then
      local kind = redis.call('TYPE', key)['ok']
      local t = kind == 'string' and header(redis.call('GET', key))
      if kind ~= shape[2] or (shape[2] == 'string' and (t == nil or t < born)) then
        redis.call('UNLINK', key)
        if shape[2] == 'string' then deleted = deleted + 1 end
      end
      return
    end
  end
end

-- A step also stops after 2 ms of server time, whatever its budget, where the clock
-- moves inside a script (Redis 7 and a slower server; Valkey 9 freezes TIME in a script,
-- and there the budget alone bounds a step).
local function overtime()
  local now = redis.call('TIME')
  return now[1] * 1000000 + now[2] - now_us > 2000
end

local function split(text)
  local items = {}
  for item in string.gmatch(text, '[^,]+') do items[#items + 1] = item end
  return items
end

-- The next page of what a job walks: users of an index (ZSCAN), or keys under the prefix
-- (SCAN, for a sweep). Returns the cursor and the items; nil, with `corrupt` set, when
-- the index is not a sorted set. A scan costs the budget a little even when empty.
local key_pattern = string.gsub(prefix, '[%*%?%[%]\\]', '\\%0') .. ':*'
local function next_page(scope, id, cursor)
  examined = examined + 1
  if scope == 'sweep' then
    local reply = redis.call('SCAN', cursor, 'MATCH', key_pattern, 'COUNT', 100)
    local keys = {}
    for _, key in ipairs(reply[2]) do
      if not string.find(key, '[,\t]') then keys[#keys + 1] = key end  -- never ours
    end
    return reply[1], keys
  end
  local index = scope == 'domain' and domain_index(id) or users_index
  local ok, reply = pcall(redis.call, 'ZSCAN', index, cursor, 'COUNT', 10)
  if not ok then
    corrupt = true
    return nil
  end
  local users = {}
  for i = 1, #reply[2], 2 do users[#users + 1] = reply[2][i] end
  return reply[1], users
end

-- One step of a job "scope\tid\tstamp\tcursor\tnames\tcarry". names: "*" or a comma-
-- separated list (encoded names never hold a comma); cursor: the scan's position, "end"
-- once it has finished; carry: what the last page returned that no step swept yet. A
-- page can be far larger than its COUNT (while the walked key's hash table resizes), so
-- a step sweeps item by item and stops at its budget, whatever the page. Returns the
-- job to keep, or nil when it is done (or unreadable: a job of another version).
-- A job of scope "users" (id "-", cursor "end") carries the user targets of a call that
-- its budget did not reach: each is swept like a user target.
local function run_job(job)
  local scope, id, s, cursor, names, carry =
    string.match(job, '^([^\t]+)\t([^\t]*)\t(%d+)\t(%w+)\t([^\t]*)\t([^\t]*)$')
  if scope == nil then return nil end
  local stamp = tonumber(s)
  local list = names ~= '*' and split(names) or nil
  local pending = split(carry)
  while examined < budget and not corrupt and not overtime() do
    if #pending > 0 then
      local item = table.remove(pending)
      if scope == 'sweep' then
        sweep_key(item, stamp)
        examined = examined + 1
      else
        sweep_user(item, list, stamp, scope == 'domain' and id or nil)  -- users: no domain
      end
    elseif cursor == 'end' then
      return nil
    else
      cursor, pending = next_page(scope, id, cursor)
      if cursor == nil then return nil end
      if cursor == '0' then cursor = 'end' end
    end
  end
  if cursor == 'end' and #pending == 0 then return nil end
  return table.concat({ scope, id, s, cursor, names, table.concat(pending, ',') }, '\t')
end

local function queue(scope, id, s, names, cursor, carry)
  redis.call('LPUSH', queue_key,
    table.concat({ scope, id, s, cursor or '0', names, carry or '' }, '\t'))
end

-- A new life of the index: no old token is accepted again and no old entry is served.
-- Fixed-name keys go at once (any may be the wrong-typed one).
local function reset()
  local ok, old = pcall(redis.call, 'HMGET', seq_key, 'n', 'ttl')
  if not ok then old = {} end
  local born = string.format('%d', math.max(now_us, (tonumber(old[1]) or 0) + 1))
  redis.call('UNLINK', seq_key, catalogue_key, queue_key, users_index, stamps_key('public'))
  -- Without its life stamp (public "*", deleted above) nothing older is served, and the
  -- next write starts a new life above this sequence (set.lua).
  redis.call('HSET', seq_key, 'n', born, 'ttl', tonumber(old[2]) or 0)
  queue('sweep', '', born, '*')
  new_life = true
end

-- Stamp every target with `s`; the user targets are cleaned at once, the others queued.
-- False when a stamp key holds another type (nothing is queued then).
local function stamp_targets(s, life)
  local written = string.format('%d', s)
  local function stamp(scope, id, fields)
    local key = stamps_key(scope, id)
    for _, field in ipairs(fields) do
      local reply = redis.pcall('HSET', key, field, written)
      if type(reply) == 'table' and reply.err then return false end
    end
    -- Public stamps (one per name, bounded) never expire: they also carry the start
    -- of the index's life. The others live as long as what they must refuse.
    if scope ~= 'public' and redis.call('PTTL', key) < life then
      redis.call('PEXPIRE', key, life)
    end
    return true
  end
  local later, unswept = {}, {}  -- unswept: names list -> users left for a "users" job
  if drop_catalogue == '1' then
    redis.call('UNLINK', catalogue_key)
    if not stamp('public', 'public', { '#names' }) then return false end
  end
  local i = 6
  while i <= #ARGV do
    local scope, id, count = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2])
    local names = nil
    if count >= 0 then
      names = {}
      for j = 1, count do names[j] = ARGV[i + 2 + j] end
    end
    if scope == 'reset' then return false end
    if not stamp(scope, id, names or { '*' }) then return false end
    if scope == 'user' then
      later[#later + 1] = function()
        if examined < budget then return sweep_user(id, names, s, nil) end
        local listed = names and table.concat(names, ',') or '*'
        unswept[listed] = unswept[listed] or {}
        table.insert(unswept[listed], id)
      end
    else
      local listed = names and table.concat(names, ',') or '*'
      later[#later + 1] = function() queue(scope, id, written, listed) end
    end
    i = i + 3 + math.max(count, 0)
  end
  for _, step in ipairs(later) do step() end
  for listed, users in pairs(unswept) do
    queue('users', '-', written, listed, 'end', table.concat(users, ','))
  end
  return not corrupt
end

local i = 6
while i <= #ARGV do
  local scope = ARGV[i]
  if scope ~= 'user' and scope ~= 'domain' and scope ~= 'public' and scope ~= 'reset' then
    return redis.error_reply('ERR unknown invalidation scope: ' .. scope)
  end
  i = i + 3 + math.max(tonumber(ARGV[i + 2]), 0)
end

local queue_type = redis.call('TYPE', queue_key)['ok']
if #ARGV > 5 or drop_catalogue == '1' then
  local ok, seq = pcall(redis.call, 'HMGET', seq_key, 'n', 'ttl')
  local life_ok, life = pcall(redis.call, 'HGET', stamps_key('public'), '*')
  ok = ok and life_ok and (queue_type == 'none' or queue_type == 'list')
  if ok then
    if not seq[1] or not life then  -- no index yet, or lost: a new life, as in set.lua
      local first = string.format('%d', math.max(now_us, (tonumber(seq[1]) or 0) + 1))
      redis.call('HSET', seq_key, 'n', first)
      redis.call('HSET', stamps_key('public'), '*', first)
      new_life = true
    end
    local s = redis.call('HINCRBY', seq_key, 'n', 1)
    moved = true
    -- Stamps outlive every entry they cover (the longest TTL written) and every token
    -- they must refuse (its maximum age).
    local life = math.max(tonumber(ARGV[2]), (tonumber(seq[2]) or 0) + tonumber(ARGV[3]))
    ok = stamp_targets(s, life)
  end
  if not ok then
    corrupt = false
    reset()
  end
elseif queue_type ~= 'none' and queue_type ~= 'list' then
  reset()
end

-- Clean up within the budget, newest job first.
local job = redis.call('LINDEX', queue_key, 0)
while job and examined < budget and not overtime() do
  local kept = run_job(job)
  if corrupt then
    corrupt = false
    reset()  -- replaces the queue with one sweep job
  elseif kept == nil then
    redis.call('LPOP', queue_key)
  else
    redis.call('LSET', queue_key, 0, kept)
  end
  job = redis.call('LINDEX', queue_key, 0)
end
if job then
  -- Jobs outlive no entry they could find: every entry expires within the longest TTL.
  local ttl = math.max(tonumber(redis.call('HGET', seq_key, 'ttl')) or 0, tonumber(ARGV[2]))
  if redis.call('PTTL', queue_key) < ttl then redis.call('PEXPIRE', queue_key, ttl) end
end
local seq_ok, n = pcall(redis.call, 'HGET', seq_key, 'n')
n = seq_ok and tonumber(n) or 0
if announce ~= '' and (moved or new_life) then
  local words = { string.format('%d', n), new_life and '1' or '0', drop_catalogue }
  for j = 6, #ARGV do words[#words + 1] = ARGV[j] end
  redis.call(announce, prefix .. ':invalidations', table.concat(words, ' '))
end
return { deleted, redis.call('LLEN', queue_key), n }
