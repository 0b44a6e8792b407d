-- bulk_keys.lua - N keys written straight into Redis, as a big installation
-- holds them: for t/relay/admin_scale.t and bench/scale.sh.
--
-- ARGV[1] N  ARGV[2] today (YYYY-MM-DD)  ARGV[3] lease expiry, ms
-- ARGV[4] the ids' last group (12 hex digits), or "" for the key's number
-- ARGV[5] "1": also outcome counts and one model's token totals (the metrics)
--
-- Every key is a full record with a hash-map entry and usage; every tenth
-- has usage today, every hundredth two requests in flight.
local n, today, expiry = tonumber(ARGV[1]), ARGV[2], ARGV[3]
local suffix, metrics = ARGV[4], ARGV[5] == '1'
for i = 1, n do
  local id = string.format('%08x-0000-4000-8000-', i) .. (suffix ~= '' and suffix or string.format('%012x', i))
  local hash = string.format('%064x', i)
  redis.call('HSET', 'apikey:' .. id, 'id', id, 'name', 'scale key ' .. i,
             'description', 'made in bulk, number ' .. i, 'apiKey', hash,
             'keyPreview', 'cr_0000…0000', 'tokenLimit', '0', 'concurrencyLimit', '10',
             'isActive', 'true', 'createdAt', string.format('2021-01-01T00:%02d:%02d.000Z',
             math.floor(i / 60) % 60, i % 60), 'updatedAt', '2021-01-01T00:00:00.000Z',
             'lastUsedAt', '', 'expiresAt', '', 'createdBy', 'scale')
  redis.call('HSET', 'apikey:hash_map', hash, id)
  redis.call('HSET', 'usage:' .. id, 'totalTokens', i, 'totalRequests', 1)
  if metrics then
    redis.call('HSET', 'metrics:outcomes:' .. id, 'admitted', i, 'concurrency_limited', 1)
    redis.call('SADD', 'usage:' .. id .. ':models', 'claude-x')
    redis.call('HSET', 'usage:' .. id .. ':model:alltime:claude-x', 'inputTokens', 10,
               'outputTokens', 5)
  end
  if i % 10 == 0 then
    redis.call('HSET', 'usage:daily:' .. id .. ':' .. today, 'tokens', 5, 'requests', 1)
  end
  if i % 100 == 0 then
    redis.call('ZADD', 'concurrency:' .. id, expiry, 'scale-a', expiry, 'scale-b')
  end
end
return 1
