-- check.lua - whether keys Redis reported changed are still valid and
-- active, read only (a read does not report the key changed again).
--
-- ARGV[1] now, ISO-8601; then pairs: key hash, key id.
-- Returns per pair {1, expiresAt} when the key is usable, else {0, ''}.
local res, iso = {}, ARGV[1]
for i = 2, #ARGV - 1, 2 do
  local k = redis.pcall('HMGET', 'apikey:' .. ARGV[i + 1], 'apiKey', 'isActive', 'expiresAt')
  if not k.err and k[1] == ARGV[i] and k[2] == 'true' and not (k[3] and k[3] ~= '' and k[3] < iso) then
    res[#res + 1] = {1, k[3] or ''}
  else
    res[#res + 1] = {0, ''}
  end
end
return res
