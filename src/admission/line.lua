-- One step of a site's line in Redis, atomic. The same state machine as
-- line.rs (the in-process line): expire unclaimed turns (refunding the
-- budget), hand out the turns the GCRA budget allows, then do `op`:
--   refresh: report the view (heartbeat of the calling node)
--   arrive:  admit a newcomer at once if nobody waits, else a ticket
--   claim:   a ticket holder asks whether its turn came
--   restore: after a reset, give back the turns this node knew (ARGV[16..])
-- Time comes from Redis (TIME), so nodes' clocks do not matter; nodes pass
-- ten keys, and an eleventh (a key holding microseconds) is the injected
-- clock of the conformance test (tests/line_conformance.rs). Counters
-- are fenced: they never go below what the calling node already knew, so a
-- Redis restart or failover (empty or older data) never reissues a ticket
-- number nor moves the cursor back; the epoch counts such resets.
local K_issued, K_cursor, K_tat, K_turns, K_claims, K_epoch, K_nodes, K_missed, K_active =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8], KEYS[9]
-- The line's own hash, for what older nodes neither read nor write (so the
-- plain keys stay as they read them): `interval` and `tolerance`, what the
-- stored `tat` was computed with; `closed_since`, the first call of the
-- current closure of the site (absent while it is open).
local K_budget = KEYS[10]
local op = ARGV[1]
local per_minute = tonumber(ARGV[2])
local burst = tonumber(ARGV[3])
local window = tonumber(ARGV[4])
local max_active = tonumber(ARGV[5])
local node = ARGV[6]
local node_active = tonumber(ARGV[7])
local known_epoch = tonumber(ARGV[8])
local known_issued = tonumber(ARGV[9])
local known_cursor = tonumber(ARGV[10])
local ticket = tonumber(ARGV[11])
local may_enter = ARGV[12] == '1'
-- Tickets other nodes may have issued since the caller's view was taken:
-- skipped over after a reset, so no number is ever issued twice, and the
-- bound past which a claimed number is lost.
local margin = tonumber(ARGV[13])
-- The site is closed: nobody can claim, so no turn is handed out and none
-- expires; pending turns keep the rest of their claim window for after the
-- reopening.
local frozen = ARGV[14] == '1'
-- A node whose heartbeat (any call) is older than this no longer counts.
local node_timeout = tonumber(ARGV[15])

local now
if KEYS[11] then
  now = tonumber(redis.call('GET', KEYS[11]))
else
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000000 + tonumber(t[2])
end

local epoch = tonumber(redis.call('GET', K_epoch) or '0')
local issued = math.max(tonumber(redis.call('GET', K_issued) or '0'), known_issued)
local cursor = math.max(tonumber(redis.call('GET', K_cursor) or '0'), known_cursor)
if epoch == 0 then
  epoch = known_epoch + 1
  redis.call('SET', K_epoch, epoch)
  if known_epoch > 0 then
    issued = issued + margin
  end
end

redis.call('ZADD', K_nodes, now, node)
redis.call('HSET', K_active, node, node_active)
redis.call('ZREMRANGEBYSCORE', K_nodes, '-inf', now - node_timeout)
local live = redis.call('ZRANGE', K_nodes, 0, -1)
local active = 0
for _, n in ipairs(live) do
  active = active + tonumber(redis.call('HGET', K_active, n) or '0')
end

local interval = 0
if per_minute > 0 then interval = math.floor(60000000 / per_minute) end
local tolerance = interval * math.max(burst - 1, 0)
-- A live rate change keeps what was already taken, as Gcra::set_rate does:
-- the free admissions carry over, and resuming from a zero rate lets no
-- burst in.
local tat = tonumber(redis.call('GET', K_tat) or '0') or 0
local old_interval = tonumber(redis.call('HGET', K_budget, 'interval') or '')
local old_tolerance = tonumber(redis.call('HGET', K_budget, 'tolerance') or '')
if old_interval and (old_interval ~= interval or old_tolerance ~= tolerance) then
  local free = 0
  if old_interval > 0 then
    local capacity = old_interval + old_tolerance
    local debt = math.min(math.max(tat - now, 0), capacity)
    free = (capacity - debt) / old_interval
  end
  if interval > 0 then
    local debt = interval + tolerance - free * interval
    tat = now + math.max(math.floor(debt), 0)
  end
end
local function take()
  if interval == 0 then return false end
  local start = math.max(tat, now)
  if start > now + tolerance then return false end
  tat = start + interval
  return true
end

-- A claimed number past the count, as line.rs does before handing out
-- turns, so a number whose turn the budget allows gets it in this call.
-- Past `issued + margin` it comes from a line whose state was lost:
-- following it would hand a turn to every number in between, held by
-- nobody. The bound differs from line.rs's on purpose: line.rs's count is
-- exact (only its process issues numbers; a crash restore adds its own
-- margin), so it allows a second or two of arrivals (`restart_margin`),
-- while here other nodes issue numbers the caller's view has not seen yet,
-- so the margin the caller sends (RESET_MARGIN_TICKETS plus 2 s of
-- cluster-wide arrivals) is the bound. tests/line_conformance.rs records it.
local lost = false
if op == 'claim' and ticket > issued then
  if ticket > issued + margin then
    lost = true
  else
    issued = ticket
  end
end

-- A closed line stands still, as in line.rs: the closure, from its first
-- call to the first open call after it, does not count against the claim
-- window of a pending turn, which keeps the rest of it after the reopening.
-- A line last written by an older node has no `closed_since`: closed, this
-- call starts counting the closure (older nodes re-stamped pending turns at
-- every closed call, so a turn's stamp is then no older than their last
-- call); open, there is nothing to shift. A turn's stamp is never moved
-- past now, so a stamp left by older nodes (or a `closed_since` an older
-- node did not clear when it reopened) gives at most a whole claim window
-- from the reopening, what older nodes gave.
if frozen then
  redis.call('HSETNX', K_budget, 'closed_since', now)
else
  local closed_since = tonumber(redis.call('HGET', K_budget, 'closed_since') or '')
  if closed_since then
    local closed = math.max(now - closed_since, 0)
    local stamps = redis.call('ZRANGE', K_turns, 0, -1, 'WITHSCORES')
    for i = 1, #stamps, 2 do
      local stamp = math.min(tonumber(stamps[i + 1]) + closed, now)
      redis.call('ZADD', K_turns, 'XX', stamp, stamps[i])
    end
    redis.call('HDEL', K_budget, 'closed_since')
  end
  local expired = redis.call('ZRANGEBYSCORE', K_turns, '-inf', now - window)
  if #expired > 0 then
    redis.call('ZREMRANGEBYSCORE', K_turns, '-inf', now - window)
    redis.call('INCRBY', K_missed, #expired)
    tat = math.max(tat - interval * #expired, now)
  end
end
local pending = redis.call('ZCARD', K_turns)
local function room()
  return max_active == 0 or active + pending < max_active
end
while not frozen and cursor < issued and room() and take() do
  cursor = cursor + 1
  redis.call('ZADD', K_turns, now, cursor)
  pending = pending + 1
end
redis.call('ZREMRANGEBYSCORE', K_claims, '-inf', now - 60000000)

local state, number = 'view', 0
if op == 'restore' then
  for i = 16, #ARGV do
    local t = tonumber(ARGV[i])
    if t <= cursor and redis.call('ZSCORE', K_turns, t) == false then
      redis.call('ZADD', K_turns, now, t)
    end
  end
elseif op == 'arrive' then
  if may_enter and cursor >= issued and room() and take() then
    state = 'admitted'
    redis.call('ZADD', K_claims, now, now .. ':' .. node .. ':a')
  else
    issued = issued + 1
    state = 'queued'
    number = issued
  end
elseif op == 'claim' then
  if lost then
    state = 'lost'
  elseif redis.call('ZREM', K_turns, ticket) == 1 then
    state = 'admitted'
    redis.call('ZADD', K_claims, now, now .. ':' .. node .. ':' .. ticket)
  elseif ticket <= cursor then
    state = 'missed'
  else
    state = 'waiting'
  end
end
redis.call('SET', K_issued, issued)
redis.call('SET', K_cursor, cursor)
-- Numbers, not strings built with `..`: Redis converts them exactly.
redis.call('SET', K_tat, tat)
redis.call('HSET', K_budget, 'interval', interval, 'tolerance', tolerance)

local claims = redis.call('ZCARD', K_claims)
local first = redis.call('ZRANGE', K_claims, 0, 0, 'WITHSCORES')
local span_ms = 60000
if first[2] then span_ms = math.max(math.floor((now - tonumber(first[2])) / 1000), 1000) end
local turns = {}
if op == 'refresh' then turns = redis.call('ZRANGE', K_turns, 0, -1) end
return {state, number, epoch, issued, cursor, #live, claims, span_ms,
        tonumber(redis.call('GET', K_missed) or '0'), turns}
