-- Stores a room message and publishes it, atomically (one slot: the room's tag).
-- KEYS[1] stream, KEYS[2] meta hash, KEYS[3] room channel, KEYS[4] dedupe key (optional)
-- ARGV[1] candidate epoch (hex), ARGV[2] history size, ARGV[3] encoded envelope,
-- ARGV[4] PUBLISH or SPUBLISH, ARGV[5] dedupe window (ms), ARGV[6] message id
-- Returns {duplicate 0/1, "<epoch>.<ms>-<seq>", message id}.
if KEYS[4] then
  local seen = redis.call('GET', KEYS[4])
  if seen then
    local nl = string.find(seen, '\n', 1, true)
    if nl then
      return {1, string.sub(seen, 1, nl - 1), string.sub(seen, nl + 1)}
    end
  end
end
redis.call('HSETNX', KEYS[2], 'epoch', ARGV[1])
local epoch = redis.call('HGET', KEYS[2], 'epoch')
local prev = redis.call('HGET', KEYS[2], 'last') or ''
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*', 'e', ARGV[3], 'p', prev)
redis.call('HSET', KEYS[2], 'last', id)
local pos = epoch .. '.' .. id
redis.call(ARGV[4], KEYS[3], pos .. '\n' .. ARGV[3])
if KEYS[4] then
  redis.call('SET', KEYS[4], pos .. '\n' .. ARGV[6], 'PX', ARGV[5])
end
return {0, pos, ARGV[6]}
