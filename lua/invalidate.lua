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
--              count -1 means every name of that scope; otherwise only the names given
--
-- Reply: the number of entries deleted.
--
-- allow-oom: an invalidation only frees memory, and must still run when a full server
-- refuses writes (maxmemory + noeviction); skipping it would leave stale entries.

local prefix = ARGV[1]
local epoch_key, all_users_key = KEYS[1], KEYS[2]
local dropped = 0

local function entry_key(user, name) return prefix .. ':merged:' .. user .. ':' .. name end
local function user_names_key(user) return prefix .. ':user:' .. user .. ':names' end
local function name_users_key(name) return prefix .. ':name:' .. name .. ':users' end
local function domain_users_key(domain) return prefix .. ':domain:' .. domain .. ':users' end

local function drop_entry(user, name)
  dropped = dropped + redis.call('UNLINK', entry_key(user, name))
  redis.call('SREM', user_names_key(user), name)
  redis.call('SREM', name_users_key(name), user)
end

local function drop_user(user, names)
  if names then
    for _, name in ipairs(names) do drop_entry(user, name) end
    return
  end
  for _, name in ipairs(redis.call('SMEMBERS', user_names_key(user))) do
    drop_entry(user, name)
  end
  redis.call('SREM', all_users_key, user)
end

local function drop_domain(domain, names)
  local members_key = domain_users_key(domain)
  if names then
    -- Only users of this domain that hold an entry for the name.
    for _, name in ipairs(names) do
      for _, user in ipairs(redis.call('SINTER', members_key, name_users_key(name))) do
        drop_entry(user, name)
      end
    end
    return
  end
  for _, user in ipairs(redis.call('SMEMBERS', members_key)) do drop_user(user, nil) end
  redis.call('UNLINK', members_key)
end

local function drop_public(names)
  if names then
    for _, name in ipairs(names) do
      for _, user in ipairs(redis.call('SMEMBERS', name_users_key(name))) do
        drop_entry(user, name)
      end
    end
    return
  end
  for _, user in ipairs(redis.call('SMEMBERS', all_users_key)) do drop_user(user, nil) end
end

-- A fresh epoch starts at the server clock in microseconds, so a counter lost with a
-- restart can never climb back to a token handed out before it.
if redis.call('EXISTS', epoch_key) == 0 then
  local now = redis.call('TIME')
  redis.call('SET', epoch_key, now[1] .. string.format('%06d', tonumber(now[2])))
end
redis.call('INCR', epoch_key)
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
  else
    return redis.error_reply('ERR unknown invalidation scope: ' .. scope)
  end
  i = i + 3 + math.max(count, 0)
end
return dropped
