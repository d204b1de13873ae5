-- Reads a room's history with its epoch and newest id, atomically.
-- KEYS[1] stream, KEYS[2] meta hash
-- ARGV[1] latest | before | since, ARGV[2] stream id (before/since), ARGV[3] count
-- Returns {epoch or '', newest id or '', entries}; each entry is {id, {field, value, ...}}
-- with fields e (encoded envelope) and p (the id of the entry before it, '' for the first).
local epoch = redis.call('HGET', KEYS[2], 'epoch') or ''
local last = redis.call('HGET', KEYS[2], 'last') or ''
local n = tonumber(ARGV[3])
local entries = {}
if n > 0 then
  if ARGV[1] == 'latest' then
    entries = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', n)
  elseif ARGV[1] == 'before' then
    entries = redis.call('XREVRANGE', KEYS[1], '(' .. ARGV[2], '-', 'COUNT', n)
  else
    entries = redis.call('XRANGE', KEYS[1], '(' .. ARGV[2], '+', 'COUNT', n)
  end
end
return {epoch, last, entries}
