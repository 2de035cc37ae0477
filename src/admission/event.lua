-- An event's pre-queue in Redis, atomic (see admission/event.rs; the same
-- steps as `Schedule::join` and `Schedule::draw_with` over line.rs):
--   join: the next pre-queue number, unless the draw was made
--   draw: once, reserve the pre-queue's count of numbers at the end of the
--         line (the `issued` counter line.lua reads), and keep the base
--   view: the state, unchanged
-- KEYS: the line's `issued`, the event's hash (same hash tag: one slot).
-- ARGV: op, the caller's known `issued` (a fence, as in line.lua), the
-- hash's time to live in seconds (it outlives the tickets that name it).
-- Returns {state, number (join) or base (drawn), count}.
local K_issued, K_event = KEYS[1], KEYS[2]
local op = ARGV[1]
local known_issued = tonumber(ARGV[2])
local ttl = tonumber(ARGV[3])

local base = redis.call('HGET', K_event, 'base')
local count = tonumber(redis.call('HGET', K_event, 'count') or '0')
if base then
  return {'drawn', tonumber(base), count}
end
if op == 'join' then
  count = redis.call('HINCRBY', K_event, 'count', 1)
  redis.call('EXPIRE', K_event, ttl)
  return {'joined', count - 1, count}
elseif op == 'draw' then
  local issued = math.max(tonumber(redis.call('GET', K_issued) or '0'), known_issued)
  redis.call('SET', K_issued, issued + count)
  redis.call('HSET', K_event, 'base', issued, 'count', count)
  redis.call('EXPIRE', K_event, ttl)
  return {'drawn', issued, count}
end
return {'prequeue', 0, count}
