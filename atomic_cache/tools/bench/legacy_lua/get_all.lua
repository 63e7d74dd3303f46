#!lua flags=no-writes
-- get_all: every cached merged config of one user, for all config names, in one step.
--
-- KEYS[1]      p:epoch   invalidation counter
-- KEYS[2]      p:names   the catalogue: every config name that has a policy (encoded)
-- ARGV[1]      the key prefix p (entry keys p:merged:{user}:{name} are built from it)
-- ARGV[2]      the user id
--
-- Reply: {epoch, 0} when the catalogue is not cached, else {epoch, names, values}
--   epoch      as in get.lua: the fill token for whatever is missing ("" if none yet)
--   names      the encoded names of the catalogue
--   values     per name: the stored string, nil when absent, 0 when of another type

local epoch = redis.call('GET', KEYS[1]) or ''
local names = redis.pcall('SMEMBERS', KEYS[2])
if type(names) ~= 'table' or names.err or #names == 0 then
  return { epoch, 0 }
end
local values = {}
for i, name in ipairs(names) do
  local value = redis.pcall('GET', ARGV[1] .. ':merged:' .. ARGV[2] .. ':' .. name)
  if type(value) == 'table' and value.err then
    value = 0
  end
  values[i] = value
end
return { epoch, names, values }
