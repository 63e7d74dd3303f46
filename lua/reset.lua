#!lua flags=allow-oom
-- reset: start a new life of the index, whatever its keys hold: from then on no entry or
-- fill token of the old life is accepted. What a key of another type where the index
-- belongs (someone else's) calls for, and a failover that lost acknowledged writes.
--
-- KEYS[1]    p:seq     invalidation sequence: n, and ttl (see invalidate.lua)
-- KEYS[2]    p:names   the catalogue of config names
-- KEYS[3]    p:gc      the clean-up queue (jobs: lua/README.md)
-- ARGV[1]    the key prefix p; other keys are built from it (one hash tag on a cluster)
-- ARGV[2]    the command that announces the new life ("PUBLISH", "SPUBLISH" on a
--            cluster, or "" for none)
-- ARGV[3]    the shortest the sweep job may live, ms (the caller's TTL + the token age)
--
-- Reply: the sequence n of the new life: above the old one and the server clock in µs.
--
-- The keys of fixed names go at once (any may be the wrong-typed one): the sequence, the
-- catalogue, the queue with its jobs, p:idx:users and the public stamps. Without the life
-- stamp (public "*") get.lua serves nothing older, and the next write starts a new life
-- above this sequence (set.lua). Keys of other names are left to the sweep job queued
-- here (sweep.lua). Announced "n 1 0", as set.lua announces a new life (lua/README.md).
-- allow-oom: a reset only frees memory.

local prefix, announce = ARGV[1], ARGV[2]
if announce ~= '' and announce ~= 'PUBLISH' and announce ~= 'SPUBLISH' then
  return redis.error_reply('ERR ARGV[2] must be "", PUBLISH or SPUBLISH: ' .. announce)
end
local seq_key, catalogue_key, queue_key = KEYS[1], KEYS[2], KEYS[3]
local clock = redis.call('TIME')
local ok, old = pcall(redis.call, 'HMGET', seq_key, 'n', 'ttl')
if not ok then old = {} end
local longest = tonumber(old[2]) or 0
local now_us = clock[1] * 1000000 + clock[2]
local born = string.format('%d', math.max(now_us, (tonumber(old[1]) or 0) + 1))

redis.call('UNLINK', seq_key, catalogue_key, queue_key, prefix .. ':idx:users',
  prefix .. ':stamp:public')
redis.call('HSET', seq_key, 'n', born, 'ttl', longest)
redis.call('LPUSH', queue_key, table.concat({ 'sweep', '', born, '0', '*', '' }, '\t'))
-- The sweep outlives every entry of the old life: each expires within the longest TTL.
redis.call('PEXPIRE', queue_key, math.max(longest, tonumber(ARGV[3])))
if announce ~= '' then
  redis.call(announce, prefix .. ':invalidations', born .. ' 1 0')
end
return tonumber(born)
