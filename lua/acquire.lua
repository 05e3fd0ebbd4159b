-- acquire: asked before a call whenever the caller's local view cannot decide alone.
-- Moves open -> half_open once open_until has passed, and hands out half-open
-- trial leases, at most half_open_max_calls at once across the whole fleet.
--
-- KEYS[1..3], ARGV[1..6]: see _prelude.lua
-- ARGV[7]: half_open_max_calls
-- ARGV[8]: lease duration in ms (a dead holder's lease expires after it)
-- ARGV[9]: lease id the caller will present to record
-- returns: {verdict, state, created_at, generation, open_until, now, failures,
--           last_failure_at, extra, event_json...}
--   verdict "admit": a normal call (closed or disabled); extra is ""
--   verdict "trial": a half-open trial under lease ARGV[9]; extra is the lease expiry (ms)
--   verdict "reject": extra is the epoch ms at which asking again may succeed
--                     ("" for forced_open: only an operator ends it)

local max_calls = tonumber(ARGV[7])
local lease_ms = tonumber(ARGV[8])
local lease_id = ARGV[9]

if S.state == 'closed' or S.state == 'disabled' then
  return reply('admit')
end
if S.state == 'forced_open' then
  return reply('reject')
end
if S.state == 'open' then
  if NOW < S.open_until then
    return reply('reject', int(S.open_until))
  end
  to_half_open()
end

-- half_open: expired leases belong to callers that died or hung; free their slots.
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', NOW)
if redis.call('ZCARD', KEYS[3]) < max_calls then
  redis.call('ZADD', KEYS[3], NOW + lease_ms, lease_id)
  save_state()
  return reply('trial', int(NOW + lease_ms))
end
save_state()
local earliest = redis.call('ZRANGE', KEYS[3], 0, 0, 'WITHSCORES')
return reply('reject', earliest[2])
