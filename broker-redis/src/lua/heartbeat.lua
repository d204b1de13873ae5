-- Refreshes a node's liveness and room set, and reaps dead nodes (one slot: the namespace tag).
-- KEYS[1] nodes hash (field escaped node id, value '<expiry ms> <info>'),
-- KEYS[2] this node's room set
-- ARGV[1] ttl (ms), ARGV[2] escaped node id, ARGV[3] info, ARGV[4] room set key prefix,
-- ARGV[5..] the rooms where this node has presence
-- Returns {{dead node, {rooms}}, ...} for the nodes whose entry expired; their
-- entries and room sets are deleted, so one caller sweeps each dead node.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('HSET', KEYS[1], ARGV[2], (now + tonumber(ARGV[1])) .. ' ' .. ARGV[3])
redis.call('DEL', KEYS[2])
local batch = {}
for j = 5, #ARGV do
  table.insert(batch, ARGV[j])
  if #batch == 1000 then
    redis.call('SADD', KEYS[2], unpack(batch))
    batch = {}
  end
end
if #batch > 0 then
  redis.call('SADD', KEYS[2], unpack(batch))
end
local dead = {}
local all = redis.call('HGETALL', KEYS[1])
for j = 1, #all, 2 do
  local expiry = tonumber(string.match(all[j + 1], '^(%d+)')) or 0
  if expiry <= now then
    local key = ARGV[4] .. all[j] .. ':rooms'
    local rooms = redis.call('SMEMBERS', key)
    redis.call('DEL', key)
    redis.call('HDEL', KEYS[1], all[j])
    table.insert(dead, {all[j], rooms})
  end
end
return dead
