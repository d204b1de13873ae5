-- The users of a room with a live (unexpired) presence field; may repeat a user.
-- KEYS[1] presence hash
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local users = {}
local all = redis.call('HGETALL', KEYS[1])
for j = 1, #all, 2 do
  local sep = string.find(all[j], ':', 1, true)
  if sep and (tonumber(all[j + 1]) or 0) > now then
    table.insert(users, string.sub(all[j], 1, sep - 1))
  end
end
return users
