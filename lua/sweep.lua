#!lua flags=allow-oom
-- sweep: one bounded step of the sweep that follows a new life of the index (reset.lua
-- queues it): delete, under the prefix, the keys of this schema's shapes that hold
-- another type, and the entries older than the new life.
--
-- KEYS[1]    p:gc      the clean-up queue; the sweep is its job "sweep" (lua/README.md)
-- ARGV[1]    the key prefix p (the sweep walks the keys that start with "p:")
-- ARGV[2]    budget: how many keys this step may examine
--
-- Reply: {entries deleted, jobs still queued, "sweep" while the job at the head is the
--        sweep, else ""}; a step whose head is another job does nothing (reclaim.lua's),
--        and "reset" when the queue holds another type (as reclaim.lua replies).
--
-- Keys are told by their shape after the prefix: components never hold ':' and user ids
-- are UUIDs, so a longer prefix that shares the start ("p:tenant2", "p:merged", "p:idx")
-- is left alone. A step is bounded as reclaim.lua's are: key by key, at its budget or
-- after 2 ms of server time where the clock moves inside a script. allow-oom: a sweep
-- only frees memory.

local queue_key, prefix, budget = KEYS[1], ARGV[1], tonumber(ARGV[2])
local clock = redis.call('TIME')
local began = clock[1] * 1000000 + clock[2]
local deleted, examined = 0, 0

local function overtime()
  local now = redis.call('TIME')
  return now[1] * 1000000 + now[2] - began > 2000
end

local uuid = '%x+%-%x+%-%x+%-%x+%-%x+'
local shapes = {
  { '^merged:' .. uuid .. ':[^:]+$', 'string' }, { '^idx:user:' .. uuid .. '$', 'zset' },
  { '^idx:domain:[^:]+$', 'zset' }, { '^idx:users$', 'zset' },
  { '^stamp:user:' .. uuid .. '$', 'hash' }, { '^stamp:domain:[^:]+$', 'hash' },
  { '^stamp:public$', 'hash' }, { '^names$', 'set' }, { '^seq$', 'hash' }, { '^gc$', 'list' },
}

-- Delete `key` if it has one of the shapes but holds another type, or is an entry whose
-- header is undecodable or older than the new life `born`.
local function sweep_key(key, born)
  local rest = string.sub(key, #prefix + 2)
  for _, shape in ipairs(shapes) do
    if string.find(rest, shape[1]) then
      local kind = redis.call('TYPE', key)['ok']
      local t = kind == 'string' and string.match(redis.call('GET', key), '^(%d+) [^\n]+\n')
      if kind ~= shape[2] or (shape[2] == 'string' and (t == nil or tonumber(t) < born)) then
        redis.call('UNLINK', key)
        if shape[2] == 'string' then deleted = deleted + 1 end
      end
      return
    end
  end
end

-- One step of the sweep job: returns the job to keep, or nil when it is done.
local function run(job)
  local born, cursor, carry = string.match(job, '^sweep\t\t(%d+)\t(%w+)\t%*\t([^\t]*)$')
  if born == nil then return nil end  -- unreadable: another version's
  local pending = {}
  for key in string.gmatch(carry, '[^,]+') do pending[#pending + 1] = key end
  local pattern = string.gsub(prefix, '[%*%?%[%]\\]', '\\%0') .. ':*'
  while examined < budget and not overtime() do
    if #pending > 0 then
      sweep_key(table.remove(pending), tonumber(born))
      examined = examined + 1
    elseif cursor == 'end' then
      return nil
    else
      local page = redis.call('SCAN', cursor, 'MATCH', pattern, 'COUNT', 100)
      examined = examined + 1
      cursor = page[1] == '0' and 'end' or page[1]
      for _, key in ipairs(page[2]) do
        if not string.find(key, '[,\t]') then pending[#pending + 1] = key end  -- never ours
      end
    end
  end
  if cursor == 'end' and #pending == 0 then return nil end
  return table.concat({ 'sweep', '', born, cursor, '*', table.concat(pending, ',') }, '\t')
end

local function is_sweep(job)  -- false: no job
  return type(job) == 'string' and string.find(job, '^sweep\t') ~= nil
end

local ok, job = pcall(redis.call, 'LINDEX', queue_key, 0)
if not ok then return { 0, 0, 'reset' } end
if is_sweep(job) then
  local kept = run(job)
  if kept == nil then
    redis.call('LPOP', queue_key)
  else
    redis.call('LSET', queue_key, 0, kept)
  end
  job = redis.call('LINDEX', queue_key, 0)
end
return { deleted, redis.call('LLEN', queue_key), is_sweep(job) and 'sweep' or '' }
