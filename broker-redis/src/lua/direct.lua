-- Dedupes and publishes a direct message (one slot: the recipient's tag).
-- KEYS[1] recipient channel, KEYS[2] dedupe key (when ARGV[5] == '1')
-- ARGV[1] PUBLISH or SPUBLISH, ARGV[2] payload, ARGV[3] dedupe window (ms),
-- ARGV[4] message id, ARGV[5] '1' to dedupe, ARGV[6] sender channel or '' (single server only)
-- Returns {duplicate 0/1, message id}.
if ARGV[5] == '1' then
  local seen = redis.call('GET', KEYS[2])
  if seen then
    return {1, seen}
  end
  redis.call('SET', KEYS[2], ARGV[4], 'PX', ARGV[3])
end
redis.call(ARGV[1], KEYS[1], ARGV[2])
if ARGV[6] ~= '' then
  redis.call(ARGV[1], ARGV[6], ARGV[2])
end
return {0, ARGV[4]}
