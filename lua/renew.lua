-- renew.lua - push the expiry of live leases forward. ZADD XX never re-adds
-- a lease that was already given back or lost, so nothing is counted twice;
-- the reply lists the positions of the leases that were not there.
-- The sets carry no TTL (a TTL could drop a live lease of another child);
-- expired leases are swept here and on one admission in sixteen.
--
-- KEYS[i] concurrency:{id}  ARGV[1] lease ms  ARGV[i+1] member of KEYS[i]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local score = string.format('%.0f', now + tonumber(ARGV[1]))
local stamp = string.format('%.0f', now)
local missing, swept = {}, {}
for i, key in ipairs(KEYS) do
  local r = redis.pcall('ZADD', key, 'XX', 'CH', score, ARGV[i + 1])
  -- a wrong-typed set is one key's trouble; any other error is the server's
  if type(r) == 'table' and r.err and not string.find(r.err, 'WRONGTYPE', 1, true) then
    return redis.error_reply(r.err)
  end
  if r == 0 then missing[#missing + 1] = i end
end
-- then sweep each set once: a killed child's leases go once they expire
for i, key in ipairs(KEYS) do
  if not swept[key] then
    swept[key] = true
    redis.pcall('ZREMRANGEBYSCORE', key, '-inf', stamp)
  end
end
return missing
