#!lua flags=allow-oom
-- reclaim: one bounded step of the clean-up queue p:gc: delete the entries that the
-- invalidations which queued its jobs cover (invalidate.lua), newest job first.
--
-- KEYS[1]    p:gc      the clean-up queue (jobs: lua/README.md)
-- ARGV[1]    the key prefix p; other keys are built from it (one hash tag on a cluster)
-- ARGV[2]    budget: how many entries this step may examine
--
-- Reply: {entries deleted, jobs still queued, what the job at the head needs now}: ""
--        for this script (or no job left), "sweep" for sweep.lua, "reset" when an index
--        key or the queue holds another type (someone else's): the caller then starts a
--        new life of the index (reset.lua), whose sweep removes it.
--
-- A job walks its target's index: p:idx:domain:{id} for a domain target, p:idx:users
-- for a public one (a user target's job carries its user). A page of a walk can be far
-- larger than its COUNT (while the index's hash table resizes), so a step sweeps user
-- by user and stops at its budget, or after 2 ms of server time where the clock moves
-- inside a script (Redis 7; Valkey 9 freezes TIME in a script). A job it cannot read
-- (another version's) is dropped. allow-oom: a clean-up only frees memory.

local queue_key, prefix, budget = KEYS[1], ARGV[1], tonumber(ARGV[2])
local users_index = prefix .. ':idx:users'
local clock = redis.call('TIME')
local began = clock[1] * 1000000 + clock[2]
local deleted, examined, corrupt = 0, 0, false

local function overtime()
  local now = redis.call('TIME')
  return now[1] * 1000000 + now[2] - began > 2000
end

local function split(text)  -- a job's comma-separated field
  local items = {}
  for item in string.gmatch(text, '[^,]+') do items[#items + 1] = item end
  return items
end

-- Delete the entries of `user` that a stamp `s` covers (the names given, or every one its
-- index lists): older than `s` and, for a domain job, filled under that domain; and those
-- that are undecodable. Entries filled since are spared. Members of entries that are gone
-- leave the user's index; a user left with none leaves p:idx:users and the domain indexes
-- its entries named.
local function sweep_user(user, names, s, domain)
  local index = prefix .. ':idx:user:' .. user
  local ok, listed = pcall(redis.call, 'ZRANGE', index, 0, -1)
  if not ok then corrupt = true return end
  local domains = {}
  for _, name in ipairs(names or listed) do
    local key = prefix .. ':merged:' .. user .. ':' .. name
    local raw = redis.pcall('GET', key)
    local t, d = nil, nil
    if type(raw) == 'string' then t, d = string.match(raw, '^(%d+) ([^\n]+)\n') end
    if d then domains[d] = true end
    if raw and (t == nil or (tonumber(t) < s and (domain == nil or d == domain))) then
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

-- One step of a job: returns the job to keep, or nil when it is done or unreadable.
local function run(job)
  local scope, id, s, cursor, names, carry =
    string.match(job, '^(%l+)\t([^\t]*)\t(%d+)\t(%w+)\t([^\t]*)\t([^\t]*)$')
  if scope == nil then return nil end
  local index = scope == 'domain' and prefix .. ':idx:domain:' .. id or users_index
  local domain = scope == 'domain' and id or nil
  local list, pending = names ~= '*' and split(names) or nil, split(carry)
  while examined < budget and not corrupt and not overtime() do
    if #pending > 0 then
      sweep_user(table.remove(pending), list, tonumber(s), domain)
    elseif cursor == 'end' then
      return nil
    else
      local ok, page = pcall(redis.call, 'ZSCAN', index, cursor, 'COUNT', 10)
      if not ok then corrupt = true return job end
      examined = examined + 1
      cursor = page[1] == '0' and 'end' or page[1]
      for i = 1, #page[2], 2 do pending[#pending + 1] = page[2][i] end
    end
  end
  if cursor == 'end' and #pending == 0 then return nil end
  return table.concat({ scope, id, s, cursor, names, table.concat(pending, ',') }, '\t')
end

local function is_sweep(job)  -- false: no job
  return type(job) == 'string' and string.find(job, '^sweep\t') ~= nil
end

local ok, job = pcall(redis.call, 'LINDEX', queue_key, 0)
if not ok then return { 0, 0, 'reset' } end
while job and not is_sweep(job) and examined < budget and not overtime() do
  local kept = run(job)
  if corrupt then return { deleted, redis.call('LLEN', queue_key), 'reset' } end
  if kept == nil then
    redis.call('LPOP', queue_key)
  else
    redis.call('LSET', queue_key, 0, kept)
  end
  job = redis.call('LINDEX', queue_key, 0)
end
return { deleted, redis.call('LLEN', queue_key), is_sweep(job) and 'sweep' or '' }
