-- batch.lua - one batch: the releases, usage and admissions a child has
-- queued, in one atomic script call (relay_lease_wire.c encodes the ARGV and
-- reads the reply). Releases go first, so a slot given back is free for an
-- admission in the same batch. Keys are named from the key ids inside the
-- script (a single Redis or a Sentinel-managed one; not Redis Cluster).
--
-- ARGV[1] lease ms  ARGV[2] now, ISO-8601
-- ARGV[3] G release groups, each: key id, M, M lease members
-- then N add groups, each: key id, M, M lease members (leases of keys
--   without any limit, admitted by the child from its cache of the key)
-- then K usage groups, each: key id, U, U records of 8 fields:
--   day, month, model or "", input, output, cache creation, cache read, requests
-- then A admissions, each: key hash, key id or "" (not cached: looked up in
--   apikey:hash_map), lease member.
--
-- Returns one entry per admission, {code, current, limit, name, legacy, id,
-- token limited, and when admitted expiresAt}: code 1 admitted, 0 unknown,
-- -1 disabled (isActive anything but "true", as claude-relay-service has it),
-- -2 expired, 2 over the concurrency limit, 3 over the token limit (then
-- current/limit are the tokens used and the token limit), -3 a record of the
-- key unusable (then the entry ends with the Redis key and Redis's error).
-- After those, one entry {key id, Redis key, error} per usage record that
-- could not be written.
--
-- Nothing is taken unless admitted. Only live leases count (scored on
-- Redis's own clock): while the set, expired leases included, is under the
-- limit that is proof enough; at the limit the live ones are counted.
-- Expired leases are swept on one admission in sixteen and by the renewals;
-- a set disappears by itself once its last lease is given back. Usage and
-- lastUsedAt (to the second) are written only to keys that still exist, so a
-- deleted key is not brought back half-empty.
--
-- A record of the wrong type (SET apikey:{id} x), or a counter that is not a
-- number, fails only the work of its own key: Redis does not undo a script's
-- writes when it stops half way, so one bad record must not stop the script,
-- or the other keys' admissions would be refused and the batch's usage lost.
-- Every command that can meet such a record is a redis.pcall, and each
-- admission runs inside a Lua pcall.
--
-- Full-line comments are left out when the script is embedded
-- (scripts/embed-lua), so what Redis runs stays short.
local t = redis.call('TIME')
-- whole milliseconds: a number prints as all its 13 digits
local stamp = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local expiry = stamp + tonumber(ARGV[1])
local iso = ARGV[2]
-- a command on a record that may be bad: an error is raised, with the
-- record in `bad` (Redis's pcall turns an error table into its text)
local bad = ''
-- only a record's own errors are caught: any other (READONLY from a
-- demoted master, OOM, MASTERDOWN) fails the whole script, so the relay
-- reconnects or refuses as for an unreachable Redis
local fatal
local function pc(...)
  local r = redis.pcall(...)
  if type(r) == 'table' and r.err and not (string.find(r.err, 'WRONGTYPE', 1, true) or string.find(r.err, 'not an integer', 1, true) or string.find(r.err, 'not a valid float', 1, true) or string.find(r.err, 'overflow', 1, true)) then
    fatal = r.err
    error(r)
  end
  return r
end
local function call(cmd, key, ...)
  local r = pc(cmd, key, ...)
  if type(r) == 'table' and r.err then
    bad = key
    error(r.err, 0)
  end
  return r
end
local i = 4
for g = 1, tonumber(ARGV[3]) do
  local m = tonumber(ARGV[i + 1])
  pc('ZREM', 'concurrency:' .. ARGV[i], unpack(ARGV, i + 2, i + 1 + m))
  i = i + 2 + m
end
-- leases of keys without any limit, admitted by the child alone
local nadd = tonumber(ARGV[i])
i = i + 1
for g = 1, nadd do
  local m = tonumber(ARGV[i + 1])
  local za = {}
  for j = 1, m do
    za[2 * j - 1] = expiry
    za[2 * j] = ARGV[i + 1 + j]
  end
  pc('ZADD', 'concurrency:' .. ARGV[i], unpack(za))
  i = i + 2 + m
end
-- usage records that could not be written, each record named once
local problems, named = {}, {}
local function problem(id, key, err)
  if not named[key] then
    named[key] = true
    problems[#problems + 1] = {id, key, err}
  end
end
local ngroups = tonumber(ARGV[i])
i = i + 1
if ngroups > 0 then
  local names = {'totalTokens', 'totalInputTokens', 'totalOutputTokens', 'totalCacheCreateTokens', 'totalCacheReadTokens', 'totalAllTokens', 'totalRequests', 'tokens', 'inputTokens', 'outputTokens', 'cacheCreateTokens', 'cacheReadTokens', 'allTokens', 'requests'}
  for g = 1, ngroups do
    local id, u = ARGV[i], tonumber(ARGV[i + 1])
    i = i + 2
    local key = 'apikey:' .. id
    local k = pc('HMGET', key, 'id', 'lastUsedAt')
    if k.err then
      problem(id, key, k.err)
      k = {}
    end
    if k[1] then
      if not k[2] or string.sub(k[2], 1, 19) ~= string.sub(iso, 1, 19) then
        pc('HSET', key, 'lastUsedAt', iso)
      end
      for r = 1, u do
        local day, month, model = ARGV[i], ARGV[i + 1], ARGV[i + 2]
        local inp, out = tonumber(ARGV[i + 3]), tonumber(ARGV[i + 4])
        local cc, cr = tonumber(ARGV[i + 5]), tonumber(ARGV[i + 6])
        local deltas = {inp + out, inp, out, cc, cr, inp + out + cc + cr, tonumber(ARGV[i + 7])}
        local hashes = {'usage:' .. id, 'usage:daily:' .. id .. ':' .. day, 'usage:monthly:' .. id .. ':' .. month}
        if model ~= '' then
          local mkey = 'usage:' .. id .. ':models'
          local s = pc('SADD', mkey, model)
          if type(s) == 'table' and s.err then problem(id, mkey, s.err) end
          hashes[4] = 'usage:' .. id .. ':model:daily:' .. model .. ':' .. day
          hashes[5] = 'usage:' .. id .. ':model:alltime:' .. model
        end
          -- zero deltas are skipped: a request without tokens costs one call per
          -- hash; a bad hash or field loses only its own count
        for h = 1, #hashes do
          local base = h == 1 and 0 or 7
          for f = 1, 7 do
            if deltas[f] ~= 0 then
              local r = pc('HINCRBY', hashes[h], names[base + f], deltas[f])
              if type(r) == 'table' and r.err then problem(id, hashes[h], r.err) end
            end
          end
        end
        i = i + 8
      end
    else
      i = i + 8 * u
    end
  end
end
-- the id an admission found, for its error entry
local found = ''
local function admit(a, hash, id, member)
  if id == '' then id = call('HGET', 'apikey:hash_map', hash) or '' end
  found = id
  local k = {}
  if id ~= '' then
    k = call('HMGET', 'apikey:' .. id, 'apiKey', 'isActive', 'expiresAt', 'concurrencyLimit', 'name', 'tokenLimit')
  end
  local name = k[5] or ''
  local tlimit = math.floor(tonumber(k[6]) or 0)
  if k[1] ~= hash then return {0, 0, 0, '', 0, '', 0} end
  if k[2] ~= 'true' then return {-1, 0, 0, name, 0, id, 0} end
  if k[3] and k[3] ~= '' and k[3] < iso then return {-2, 0, 0, name, 0, id, 0} end
  local used = 0
  if tlimit > 0 then
    local ukey = 'usage:' .. id
    local v = call('HGET', ukey, 'totalTokens')
    -- a count that cannot be read must not read as none used
    if v and not tonumber(v) then
      bad = ukey
      error('its field totalTokens is not a number', 0)
    end
    used = math.floor(tonumber(v) or 0)
  end
  if tlimit > 0 and used >= tlimit then return {3, used, tlimit, name, 0, id, 1} end
  local limit = math.floor(tonumber(k[4]) or 0)
  if limit < 0 then limit = 0 end
  local ckey = 'concurrency:' .. id
  local legacy, c = 0, 0
  if limit > 0 then
    c = pc('ZCARD', ckey)
    if type(c) == 'number' and c >= limit then
      c = call('ZCOUNT', ckey, '(' .. stamp, '+inf')
    end
  end
  if (tonumber(t[2]) + a) % 16 == 0 then
    c = pc('ZREMRANGEBYSCORE', ckey, '-inf', stamp)
    if limit > 0 and type(c) == 'number' then c = call('ZCARD', ckey) end
  end
  if type(c) == 'table' and c.err then
    -- a plain counter left by an older relay: replaced by a set of leases
    call('DEL', ckey)
    legacy, c = 1, 0
  end
  if limit == 0 then c = 0 end
  if limit > 0 and c >= limit then return {2, c, limit, name, legacy, id, 0} end
  local z = pc('ZADD', ckey, expiry, member)
  if type(z) == 'table' and z.err then
    call('DEL', ckey)
    call('ZADD', ckey, expiry, member)
    legacy = 1
  end
  return {1, c + 1, limit, name, legacy, id, tlimit > 0 and 1 or 0, k[3] or ''}
end
local res = {}
local n = tonumber(ARGV[i])
i = i + 1
for a = 1, n do
  local hash, id, member = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  i = i + 3
  found, bad = id, ''
  local ok, r = pcall(admit, a, hash, id, member)
  if fatal then return redis.error_reply(fatal) end
  if ok then res[a] = r
  else res[a] = {-3, 0, 0, '', 0, found, 0, bad, tostring(r)} end
end
for p = 1, #problems do res[n + p] = problems[p] end
return res
