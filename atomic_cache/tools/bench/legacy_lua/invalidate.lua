#!lua flags=allow-oom
-- invalidate: drop every cached entry a list of scope targets covers, and make every
-- fill token handed out before this step useless, in one atomic step.
--
-- KEYS[1]      p:epoch    invalidation counter (fill tokens are its values)
-- KEYS[2]      p:users    set of every user with an entry
-- KEYS[3]      p:names    the catalogue of config names (see get_all.lua)
-- ARGV[1]      the key prefix p; the other keys are built from it and the set members,
--              so every key shares the prefix (and its hash tag, in cluster mode)
-- ARGV[2]      "1" to drop the catalogue too (a policy was created or deleted), else "0"
-- ARGV[3..]    targets, each: scope, id, count, then `count` encoded names
--                scope "user"    id = user id
--                scope "domain"  id = encoded domain name   (DOMAIN, DOMAIN_USER_DEFAULTS)
--                scope "public"  id = "public"
--                scope "reset"   id ignored: drop every key under the prefix (see below)
--              count -1 means every name of that scope; otherwise only the names given
--
-- Reply: the number of entries deleted.
--
-- allow-oom: an invalidation only frees memory, and must still run when a full server
-- refuses writes (maxmemory + noeviction); skipping it would leave stale entries.
--
-- A key of another type where a membership set or the epoch belongs (written by someone
-- else) means the index can no longer say which entries a target covers. Rather than
-- fail (and fail again on every replay), the script then drops every key under the
-- prefix, entries and sets alike, and starts a fresh epoch: more misses, never stale.

local prefix = ARGV[1]
local epoch_key, all_users_key = KEYS[1], KEYS[2]
local dropped = 0
local corrupt = false

-- redis.call, except that WRONGTYPE marks the index corrupt and answers `empty`.
local function call(empty, ...)
  local reply = redis.pcall(...)
  if type(reply) == 'table' and reply.err then
    if string.find(reply.err, 'WRONGTYPE', 1, true) then
      corrupt = true
      return empty
    end
    error(reply)
  end
  return reply
end

local function entry_key(user, name) return prefix .. ':merged:' .. user .. ':' .. name end
local function user_names_key(user) return prefix .. ':user:' .. user .. ':names' end
local function name_users_key(name) return prefix .. ':name:' .. name .. ':users' end
local function domain_users_key(domain) return prefix .. ':domain:' .. domain .. ':users' end

local function drop_entry(user, name)
  dropped = dropped + redis.call('UNLINK', entry_key(user, name))
  call(0, 'SREM', user_names_key(user), name)
  call(0, 'SREM', name_users_key(name), user)
end

local function drop_user(user, names)
  if names then
    for _, name in ipairs(names) do drop_entry(user, name) end
    return
  end
  for _, name in ipairs(call({}, 'SMEMBERS', user_names_key(user))) do
    drop_entry(user, name)
  end
  call(0, 'SREM', all_users_key, user)
end

local function drop_domain(domain, names)
  local members_key = domain_users_key(domain)
  if names then
    -- Only users of this domain that hold an entry for the name.
    for _, name in ipairs(names) do
      for _, user in ipairs(call({}, 'SINTER', members_key, name_users_key(name))) do
        drop_entry(user, name)
      end
    end
    return
  end
  for _, user in ipairs(call({}, 'SMEMBERS', members_key)) do drop_user(user, nil) end
  redis.call('UNLINK', members_key)
end

local function drop_public(names)
  if names then
    for _, name in ipairs(names) do
      for _, user in ipairs(call({}, 'SMEMBERS', name_users_key(name))) do
        drop_entry(user, name)
      end
    end
    return
  end
  for _, user in ipairs(call({}, 'SMEMBERS', all_users_key)) do drop_user(user, nil) end
end

-- Every key this schema writes under the prefix, but the epoch: what is left to do when
-- the index is corrupt. Only keys of exactly these shapes (components never hold ':'),
-- so a longer prefix that shares the start ("p:tenant2", even "p:user") is left alone.
-- SCAN walks the whole keyspace: a rare, slow path.
local shapes = { '^merged:[^:]+:[^:]+$', '^user:[^:]+:names$', '^domain:[^:]+:users$',
                 '^name:[^:]+:users$', '^users$', '^names$' }
local function ours(rest)
  for _, shape in ipairs(shapes) do
    if string.find(rest, shape) then return true end
  end
  return false
end
local function drop_prefix()
  local pattern = string.gsub(prefix, '[%*%?%[%]\\]', '\\%0') .. ':*'
  local cursor = '0'
  repeat
    local reply = redis.call('SCAN', cursor, 'MATCH', pattern, 'COUNT', 1000)
    cursor = reply[1]
    for _, key in ipairs(reply[2]) do
      local rest = string.sub(key, #prefix + 2)
      if ours(rest) then
        local gone = redis.call('UNLINK', key)
        if string.find(rest, '^merged:') then dropped = dropped + gone end
      end
    end
  until cursor == '0'
end

-- A fresh epoch starts at the server clock in microseconds, so a counter lost with a
-- restart can never climb back to a token handed out before it.
local function fresh_epoch()
  local now = redis.call('TIME')
  redis.call('SET', epoch_key, now[1] .. string.format('%06d', tonumber(now[2])))
end

if redis.call('EXISTS', epoch_key) == 0 then fresh_epoch() end
if type(redis.pcall('INCR', epoch_key)) ~= 'number' then
  corrupt = true  -- not a counter: no token handed out from it can be trusted either
  fresh_epoch()
  redis.call('INCR', epoch_key)
end
if ARGV[2] == '1' then
  redis.call('UNLINK', KEYS[3])
end

local i = 3
while i <= #ARGV do
  local scope, id, count = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2])
  local names = nil
  if count >= 0 then
    names = {}
    for j = 1, count do names[j] = ARGV[i + 2 + j] end
  end
  if scope == 'user' then
    drop_user(id, names)
  elseif scope == 'domain' then
    drop_domain(id, names)
  elseif scope == 'public' then
    drop_public(names)
  elseif scope == 'reset' then
    corrupt = true
  else
    return redis.error_reply('ERR unknown invalidation scope: ' .. scope)
  end
  i = i + 3 + math.max(count, 0)
end
if corrupt then
  drop_prefix()  -- entries already dropped above are gone, so none is counted twice
end
return dropped
