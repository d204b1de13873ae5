-- The live nodes: {escaped id, '<expiry> <info>', ...} for entries not yet expired.
-- KEYS[1] nodes hash
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local live = {}
local all = redis.call('HGETALL', KEYS[1])
for j = 1, #all, 2 do
  local expiry = tonumber(string.match(all[j + 1], '^(%d+)')) or 0
  if expiry > now then
    table.insert(live, all[j])
    table.insert(live, all[j + 1])
  end
end
return live
