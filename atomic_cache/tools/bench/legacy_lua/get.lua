#!lua flags=no-writes
-- get: read cached merged configs of one user, plus the fill token for misses.
--
-- KEYS[1]      the epoch key (p:epoch)
-- KEYS[2..n]   the entry keys to read (p:merged:{user}:{name}), one or more
-- ARGV         none
--
-- Reply: an array of n elements.
--   [1]        the current epoch as a string, or "" when no invalidation ran yet;
--              a caller that fills a miss passes it back to set.lua as its fill token
--   [2..n]     per entry key: the stored string, nil when absent, or the integer 0
--              when the key holds another type (the caller treats it as corrupt)
--
-- Read-only (no-writes), so EVALSHA_RO may serve it from a replica.

local reply = { redis.call('GET', KEYS[1]) or '' }
for i = 2, #KEYS do
  local value = redis.pcall('GET', KEYS[i])
  if type(value) == 'table' and value.err then
    value = 0
  end
  reply[i] = value
end
return reply
