-- Shared by every breaker script: the loader prepends this file to each of them, so
-- the clock, the persistence of the state hash and every state transition are
-- written exactly once.
--
-- KEYS (every script):
--   KEYS[1]: state hash   <prefix>:{<name>}
--   KEYS[2]: window hash  <prefix>:{<name>}:window   (bucketed call counters)
--   KEYS[3]: leases zset  <prefix>:{<name>}:leases   (half-open trial leases)
-- ARGV (every script; script-specific arguments start at ARGV[7]):
--   ARGV[1]: now in epoch ms, or "" to use Redis TIME (tests inject time here)
--   ARGV[2]: the breaker name, as given (only for the events)
--   ARGV[3]: the pub/sub channel for transition events
--   ARGV[4]: key TTL in ms, refreshed on every write
--   ARGV[5]: window bucket width in ms
--   ARGV[6]: number of buckets in the window
--   ARGV[4..6] may each be "": an operator tool that does not know the breaker's
--   settings acts with the ones the breaker stored in its hash (key_ttl,
--   window_bucket, buckets), so that it never re-applies defaults.

local function clock_ms()
  if ARGV[1] ~= '' then
    return tonumber(ARGV[1])
  end
  -- Redis time, so that the replicas' own clocks never matter.
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local NOW = clock_ms()
local NAME = ARGV[2]
local CHANNEL = ARGV[3]

-- Integers are written with %d: tostring() would switch to exponent notation for
-- large values on some Lua builds.
local function int(x)
  return string.format('%d', math.floor(x))
end

local EXISTED = false  -- whether the state hash was there when the script began

local function load_state()
  local flat = redis.call('HGETALL', KEYS[1])
  EXISTED = #flat > 0
  local h = {}
  for i = 1, #flat, 2 do
    h[flat[i]] = flat[i + 1]
  end
  return {
    state = h.state or 'closed',
    -- The hash's incarnation: a hash lost to a restart or to its TTL comes back with
    -- a later created_at, so processes know its generations started again.
    created_at = tonumber(h.created_at or NOW),
    generation = tonumber(h.generation or '0'),
    failures = tonumber(h.failures or '0'),
    last_failure_at = tonumber(h.last_failure_at or '0'),
    opened_at = tonumber(h.opened_at or '0'),
    open_until = tonumber(h.open_until or '0'),
    reopens = tonumber(h.reopens or '0'),
    trial_successes = tonumber(h.trial_successes or '0'),
    -- The settings operators act with, as the breaker's own calls stored them.
    key_ttl = tonumber(h.key_ttl),
    window_bucket = tonumber(h.window_bucket),
    buckets = tonumber(h.buckets),
  }
end

local S = load_state()
local EVENTS = {}

-- What the hash held when the script began: a call that changes nothing (a success
-- in a healthy closed breaker) then writes nothing but the TTL.
local LOADED = {}
for field, value in pairs(S) do
  LOADED[field] = value
end

-- The caller's settings win; an operator tool sends none and takes the stored ones
-- (or the defaults, for a breaker that never ran).
S.key_ttl = tonumber(ARGV[4]) or S.key_ttl or 604800000
S.window_bucket = tonumber(ARGV[5]) or S.window_bucket or 1000
S.buckets = tonumber(ARGV[6]) or S.buckets or 10
local TTL_MS = S.key_ttl

local function unchanged()
  if not EXISTED then
    return false
  end
  for field, value in pairs(S) do
    if LOADED[field] ~= value then
      return false
    end
  end
  return true
end

local function save_state()
  if not unchanged() then
    redis.call('HSET', KEYS[1],
      'state', S.state,
      'created_at', int(S.created_at),
      'generation', int(S.generation),
      'failures', int(S.failures),
      'last_failure_at', int(S.last_failure_at),
      'opened_at', int(S.opened_at),
      'open_until', int(S.open_until),
      'reopens', int(S.reopens),
      'trial_successes', int(S.trial_successes),
      'key_ttl', int(S.key_ttl),
      'window_bucket', int(S.window_bucket),
      'buckets', int(S.buckets))
  end
  -- Every write refreshes every key's TTL, the leases' too (ZADD makes that key
  -- without one). PEXPIRE on a missing key is a no-op.
  redis.call('PEXPIRE', KEYS[1], TTL_MS)
  redis.call('PEXPIRE', KEYS[2], TTL_MS)
  redis.call('PEXPIRE', KEYS[3], TTL_MS)
end

-- The one place where the state changes. Every transition bumps the generation, so
-- outcomes of calls admitted under an older generation are recognised as stale, and
-- is published, so that every process updates its local view without a call.
local function transition(to, reason)
  local from = S.state
  S.state = to
  S.generation = S.generation + 1
  local event = cjson.encode({
    name = NAME, from = from, to = to, at = NOW, reason = reason,
    created_at = S.created_at, generation = S.generation, open_until = S.open_until,
  })
  redis.call('PUBLISH', CHANNEL, event)
  EVENTS[#EVENTS + 1] = event
end

local function to_open(reason, reset_ms, reset_max_ms, multiplier, jitter, jitter_sample)
  if S.state == 'half_open' then
    S.reopens = S.reopens + 1
  else
    S.reopens = 0
  end
  local duration = reset_ms
  if reset_max_ms > 0 then
    duration = math.min(reset_ms * multiplier ^ S.reopens, reset_max_ms)
  end
  duration = duration * (1 + jitter * jitter_sample)
  S.opened_at = NOW
  S.open_until = NOW + math.floor(duration)
  S.trial_successes = 0
  redis.call('DEL', KEYS[3])
  transition('open', reason)
end

local function to_half_open()
  S.trial_successes = 0
  redis.call('DEL', KEYS[3])
  transition('half_open', 'reset_timeout')
end

local function to_closed(reason)
  S.failures = 0
  S.reopens = 0
  S.trial_successes = 0
  S.open_until = 0
  -- A fresh closed period starts with an empty window, or the failures that opened
  -- the breaker would trip it again at once.
  redis.call('DEL', KEYS[2], KEYS[3])
  transition('closed', reason)
end

-- Calls, failures, slow calls, retries granted, of them on a floor token, retries
-- refused, and calls rejected ("c", "f", "s", "r", "t", "d", "x") summed over the buckets of the window
-- that ends at bucket ``current``. With ``prune``, the buckets that slid out are
-- deleted (a read-only caller passes false). Fields that are not "<bucket>:<kind>"
-- (budget.lua's "floor:*") are no counters and are left alone.
local function window_sums(current, buckets, prune)
  local flat = redis.call('HGETALL', KEYS[2])
  local sums = { c = 0, f = 0, s = 0, r = 0, t = 0, d = 0, x = 0 }
  local expired = {}
  local oldest = current - buckets + 1
  for i = 1, #flat, 2 do
    local sep = string.find(flat[i], ':', 1, true)
    local bucket = tonumber(string.sub(flat[i], 1, sep - 1))
    if bucket == nil then
      -- not a counter
    elseif bucket < oldest then
      expired[#expired + 1] = flat[i]
    else
      local kind = string.sub(flat[i], sep + 1)
      sums[kind] = sums[kind] + tonumber(flat[i + 1])
    end
  end
  if prune and #expired > 0 then
    redis.call('HDEL', KEYS[2], unpack(expired))
  end
  return sums
end

-- The reply shared by every script: the verdict, then the local view every caller
-- refreshes from it, then the JSON of the transitions this call made.
local function reply(verdict, extra)
  local r = {
    verdict, S.state, int(S.created_at), int(S.generation), int(S.open_until), int(NOW),
    int(S.failures), int(S.last_failure_at), extra or '',
  }
  for i = 1, #EVENTS do
    r[#r + 1] = EVENTS[i]
  end
  return r
end

