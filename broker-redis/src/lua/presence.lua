-- Joins, leaves, refreshes and sweeps presence fields of one room, publishing a
-- change when a user's first field appears or last field goes (one slot: the room's tag).
-- KEYS[1] presence hash (field '<user>:<node>' escaped, value expiry ms), KEYS[2] room channel
-- ARGV[1] PUBLISH or SPUBLISH, ARGV[2] ttl (ms), then four counted lists:
--   own:     n, then n × (user, node, encoded 'joined' envelope)  -- set or refresh
--   remove:  n, then n × (user, node, encoded 'left' envelope)    -- delete
--   dead:    n, then n × node                                     -- delete all their fields
--   leaves:  n, then n × (user, encoded 'left' envelope)          -- for swept users
-- Expired fields (and those of dead nodes) are swept, except the ones being refreshed.
-- Returns the users whose last field should be swept but whose 'left' envelope
-- was not given: the caller encodes it and calls again.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local pub = ARGV[1]
local ttl = tonumber(ARGV[2])
local i = 3
local function take()
  local v = ARGV[i]
  i = i + 1
  return v
end
local own = {}
for _ = 1, tonumber(take()) do
  local u, n, e = take(), take(), take()
  table.insert(own, {u, n, e})
end
local removes = {}
for _ = 1, tonumber(take()) do
  local u, n, e = take(), take(), take()
  table.insert(removes, {u, n, e})
end
local dead = {}
for _ = 1, tonumber(take()) do
  dead[take()] = true
end
local leave_env = {}
for _ = 1, tonumber(take()) do
  local u, e = take(), take()
  leave_env[u] = e
end

local count = {}
local exists = {}
local fields = {}
local all = redis.call('HGETALL', KEYS[1])
for j = 1, #all, 2 do
  local f = all[j]
  local sep = string.find(f, ':', 1, true)
  if sep then
    local u = string.sub(f, 1, sep - 1)
    count[u] = (count[u] or 0) + 1
    exists[f] = true
    table.insert(fields, {f, u, string.sub(f, sep + 1), tonumber(all[j + 1]) or 0})
  else
    redis.call('HDEL', KEYS[1], f)
  end
end

local mine = {}
for _, o in ipairs(own) do
  local f = o[1] .. ':' .. o[2]
  mine[f] = true
  if not exists[f] then
    exists[f] = true
    local c = count[o[1]] or 0
    if c == 0 then
      redis.call(pub, KEYS[2], o[3])
    end
    count[o[1]] = c + 1
  end
  redis.call('HSET', KEYS[1], f, now + ttl)
end

for _, r in ipairs(removes) do
  local f = r[1] .. ':' .. r[2]
  if exists[f] and not mine[f] then
    exists[f] = nil
    redis.call('HDEL', KEYS[1], f)
    count[r[1]] = count[r[1]] - 1
    if count[r[1]] == 0 then
      redis.call(pub, KEYS[2], r[3])
    end
  end
end

local missing = {}
for _, x in ipairs(fields) do
  local f, u = x[1], x[2]
  if exists[f] and not mine[f] and (dead[x[3]] or x[4] <= now) then
    if count[u] > 1 then
      redis.call('HDEL', KEYS[1], f)
      exists[f] = nil
      count[u] = count[u] - 1
    elseif leave_env[u] then
      redis.call('HDEL', KEYS[1], f)
      exists[f] = nil
      count[u] = 0
      redis.call(pub, KEYS[2], leave_env[u])
    else
      table.insert(missing, u)
    end
  end
end
return missing
