#!lua name=fleetbreaker
-- fleetbreaker: every decision of every breaker, as one Redis FUNCTION library.
--
-- The loader (breaker/_scripts.py) loads it once per server with FUNCTION LOAD
-- REPLACE, under names that carry a hash of this file: the library
-- `fleetbreaker_<version>` and its functions `fb_<version>_<operation>`. A process
-- calls the functions of its own version, so two versions of fleetbreaker (a rolling
-- deploy) never run each other's code. Where a server refuses FUNCTION (Redis < 7,
-- an ACL), the loader cuts this file at the "registrations" marker and runs each
-- operation as a script that ends `return <operation>(KEYS, ARGV)`.
--
-- KEYS (every operation):
--   KEYS[1]: state hash   <prefix>:{<name>}          the state, and the breaker's settings
--   KEYS[2]: window hash  <prefix>:{<name>}:window   bucketed counters
--   KEYS[3]: leases zset  <prefix>:{<name>}:leases   half-open trial leases
-- ARGV (every operation; an operation's own start at ARGV[4]):
--   ARGV[1]: now in epoch ms, or "" for Redis TIME (tests inject time here)
--   ARGV[2]: the digest of the caller's settings; "" for an operator tool, which acts
--            with the settings the breaker stored
--   ARGV[3]: the caller's settings as JSON, or "". A process sends them with its first
--            call of a breaker (the newest process's settings win, and every call
--            runs with the stored ones), and again when the breaker has none.
-- Every reply: the fields named in REPLY, in its order, then the JSON of each
-- transition the call made.
--   verdict "unconfigured": the breaker holds no settings and none came; nothing was
--   done: send them. digest: of the settings the call ran with.
--
-- Settings live in the state hash, beside the state (durations in ms): name, channel,
-- key_ttl, window_bucket, buckets, failure_threshold, success_threshold,
-- failure_rate_threshold and slow_call_rate_threshold (-1: off), slow_call_duration
-- (0: off), minimum_calls, reset_timeout, reset_timeout_max (0: no growth),
-- reset_timeout_multiplier, reset_timeout_jitter, half_open_max_calls,
-- half_open_lease, quorum, settings (their digest) and settings_at (when stored).
--
-- Quorum (a setting): a trip needs its condition and votes from at least `quorum`
-- distinct voters (instances) among the failures it counts; a fraction below 1 is that
-- share of the voters live in the window, rounded up, at least 1. 1 (the default) is
-- no quorum: no vote is kept. Votes: the current streak's voters in the state hash
-- (`voters`, comma-separated), and per bucket in the window hash ("<bucket>:F:<voter>"
-- for a failure, "<bucket>:S:<voter>" for a slow call), expiring with their bucket.
-- Liveness: "live:<voter>" in the state hash, the epoch ms of the voter's last
-- heartbeat (sent with calls it makes anyway). "isolated:<process>": until when a
-- process refuses its own calls, its own failures alone being enough to trip.
--
-- TTLs: every key expires key_ttl after it was last refreshed, and keys are refreshed
-- when the state changes and on the first call of each window bucket: a key expires
-- no later than key_ttl + one bucket after its last write.

local SETTINGS = {
  'name', 'channel', 'key_ttl', 'window_bucket', 'buckets', 'failure_threshold',
  'success_threshold', 'failure_rate_threshold', 'slow_call_rate_threshold',
  'slow_call_duration', 'minimum_calls', 'reset_timeout', 'reset_timeout_max',
  'reset_timeout_multiplier', 'reset_timeout_jitter', 'half_open_max_calls',
  'half_open_lease', 'quorum',
}
local DEFAULTS = {
  name = '', channel = '', key_ttl = 604800000, window_bucket = 1000, buckets = 10,
  failure_threshold = 5, success_threshold = 1, failure_rate_threshold = -1,
  slow_call_rate_threshold = -1, slow_call_duration = 0, minimum_calls = 10,
  reset_timeout = 10000, reset_timeout_max = 0, reset_timeout_multiplier = 2,
  reset_timeout_jitter = 0, half_open_max_calls = 1, half_open_lease = 10000, quorum = 1,
}
local STATE = {
  'state', 'created_at', 'generation', 'failures', 'last_failure_at', 'opened_at',
  'open_until', 'reopens', 'trial_successes', 'voters',
}
-- The layout of every reply, written once (REPLY_FIELDS in breaker/_wire.py reads it
-- by name; tests/test_contract.py ties the two).
local REPLY = {
  'verdict', 'state', 'created_at', 'generation', 'open_until', 'now', 'failures',
  'last_failure_at', 'extra', 'digest',
}

-- Integers are written with %d: tostring() would switch to exponent notation for
-- large values on some Lua builds.
local function int(x)
  return string.format('%d', math.floor(x))
end

-- One call's context: the keys, the time, the settings and the state once loaded,
-- and the transitions it made.
-- Now in epoch ms: the one given (tests inject time), else Redis TIME, so that the
-- replicas' own clocks never matter.
local function time_now(given)
  if given ~= '' then
    return tonumber(given)
  end
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function begin(keys, args)
  return { keys = keys, args = args, now = time_now(args[1]), events = {}, digest = args[2] }
end

local function state_from(h, now)
  return {
    state = h.state or 'closed',
    -- The hash's incarnation: a hash lost to a restart or to its TTL comes back with
    -- a later created_at, so processes know its generations started again.
    created_at = tonumber(h.created_at) or now,
    generation = tonumber(h.generation) or 0,
    failures = tonumber(h.failures) or 0,
    last_failure_at = tonumber(h.last_failure_at) or 0,
    opened_at = tonumber(h.opened_at) or 0,
    open_until = tonumber(h.open_until) or 0,
    reopens = tonumber(h.reopens) or 0,
    trial_successes = tonumber(h.trial_successes) or 0,
    voters = h.voters or '',
  }
end

local function settings_from(h)
  local cfg = {}
  for _, field in ipairs(SETTINGS) do
    local value = h[field]
    if field == 'name' or field == 'channel' then
      cfg[field] = value or DEFAULTS[field]
    else
      cfg[field] = tonumber(value) or DEFAULTS[field]
    end
  end
  return cfg
end

-- Loads the whole state hash into c.s (the state), c.cfg (the settings), and
-- c.loaded (a copy, to tell a change). False when the call must stop: the breaker
-- holds no settings, none came, and it is not an operator's call.
local function load(c)
  local flat = redis.call('HGETALL', c.keys[1])
  local h = {}
  for i = 1, #flat, 2 do
    h[flat[i]] = flat[i + 1]
  end
  c.existed = #flat > 0
  c.h = h
  c.s = state_from(h, c.now)
  c.loaded = {}
  for field, value in pairs(c.s) do
    c.loaded[field] = value
  end
  c.stored = h.settings or ''
  if c.args[3] ~= '' then
    local offered = cjson.decode(c.args[3])
    local pairs_out = { 'settings', c.digest, 'settings_at', int(c.now) }
    local defaulted = {}
    for _, field in ipairs(SETTINGS) do
      local value = offered[field]
      if value == nil then
        -- Left out at its default (quorum), so that a hash without it reads as before.
        defaulted[#defaulted + 1] = field
        h[field] = nil
      else
        h[field] = type(value) == 'number' and string.format('%.17g', value) or value
        pairs_out[#pairs_out + 1] = field
        pairs_out[#pairs_out + 1] = h[field]
      end
    end
    redis.call('HSET', c.keys[1], unpack(pairs_out))
    if #defaulted > 0 then
      redis.call('HDEL', c.keys[1], unpack(defaulted))
    end
    c.stored = c.digest
    c.refresh = true
  elseif c.stored == '' and c.digest ~= '' then
    return false
  end
  c.cfg = settings_from(h)
  return true
end

local function changed(c)
  if not c.existed then
    return true
  end
  for field, value in pairs(c.s) do
    if c.loaded[field] ~= value then
      return true
    end
  end
  return false
end

local function refresh_ttls(c)
  local ttl = c.cfg.key_ttl
  redis.call('PEXPIRE', c.keys[1], ttl)
  redis.call('PEXPIRE', c.keys[2], ttl)
  redis.call('PEXPIRE', c.keys[3], ttl)
end

-- Writes the state if the call changed it (a success in a healthy closed breaker
-- changes nothing, and writes nothing), and refreshes the TTLs with every write.
local function save(c)
  if changed(c) then
    local flat = {}
    for _, field in ipairs(STATE) do
      local value = c.s[field]
      -- No streak's voters without a quorum: the field is written once there are some.
      if field ~= 'voters' or value ~= '' or c.loaded.voters ~= '' then
        flat[#flat + 1] = field
        flat[#flat + 1] = type(value) == 'string' and value or int(value)
      end
    end
    redis.call('HSET', c.keys[1], unpack(flat))
    c.refresh = true
  end
  if c.refresh then
    refresh_ttls(c)
    c.refresh = false
  end
end

-- The one place where the state changes. Every transition bumps the generation, so
-- outcomes of calls admitted under an older generation are recognised as stale, and
-- is published, so that every process updates its local view without a call.
local function transition(c, to, reason)
  local s = c.s
  local from = s.state
  s.state = to
  s.generation = s.generation + 1
  local event = cjson.encode({
    name = c.cfg.name, from = from, to = to, at = c.now, reason = reason,
    created_at = s.created_at, generation = s.generation, open_until = s.open_until,
  })
  local channel = c.cfg.channel
  if channel ~= '' then
    -- A channel that carries the breaker's hash tag is its own (Redis Cluster): it
    -- is published in the breaker's shard only. Otherwise one channel carries every
    -- breaker's events (a standalone Redis, or Sentinel).
    if string.find(channel, '{', 1, true) then
      redis.call('SPUBLISH', channel, event)
    else
      redis.call('PUBLISH', channel, event)
    end
  end
  c.events[#c.events + 1] = event
end

-- A caller has seen a later version of the breaker (created_at:generation) than this
-- store holds: the store lost writes it had acknowledged (a replica promoted before
-- it had them all). It moves past every version the fleet saw, keeping the state it
-- holds, so that no version ever means two different things, and tells the fleet.
local function advance(c, seen)
  if seen == nil or seen == '' then
    return
  end
  local created_at, generation = string.match(seen, '^(%d+):(%d+)$')
  created_at, generation = tonumber(created_at), tonumber(generation)
  local s = c.s
  if created_at > s.created_at or (created_at == s.created_at and generation > s.generation) then
    s.created_at = created_at
    s.generation = generation
    transition(c, s.state, 'resync')
  end
end

local function to_open(c, reason)
  local s, cfg = c.s, c.cfg
  if s.state == 'half_open' then
    s.reopens = s.reopens + 1
  else
    s.reopens = 0
  end
  local duration = cfg.reset_timeout
  if cfg.reset_timeout_max > 0 then
    duration = math.min(cfg.reset_timeout * cfg.reset_timeout_multiplier ^ s.reopens,
      cfg.reset_timeout_max)
  end
  -- A jitter sample from the clock and the generation: a script's random numbers are
  -- the same on every call, and two trips in one millisecond must still differ.
  local sample = ((c.now + s.generation * 7919) % 997) / 997
  duration = duration * (1 + cfg.reset_timeout_jitter * sample)
  s.opened_at = c.now
  s.open_until = c.now + math.floor(duration)
  s.trial_successes = 0
  redis.call('DEL', c.keys[3])
  transition(c, 'open', reason)
end

local function to_half_open(c)
  c.s.trial_successes = 0
  redis.call('DEL', c.keys[3])
  transition(c, 'half_open', 'reset_timeout')
end

-- A fresh closed period starts with an empty window, or the failures that opened the
-- breaker would trip it again at once; a reset also forgets when it last failed.
local function to_closed(c, reason)
  local s = c.s
  s.failures = 0
  s.voters = ''
  s.reopens = 0
  s.trial_successes = 0
  s.open_until = 0
  if reason == 'reset' then
    s.last_failure_at = 0
    s.opened_at = 0
  end
  redis.call('DEL', c.keys[2], c.keys[3])
  transition(c, 'closed', reason)
end

-- Calls, failures, slow calls, retries granted, of them on a floor token, retries
-- refused, and calls rejected ("c", "f", "s", "r", "t", "d", "x") summed over the
-- buckets of the window that ends at bucket ``current``. With ``prune``, the buckets
-- that slid out are deleted. Fields that are not "<bucket>:<kind>" (the budget's
-- "floor:*") are no counters and are left alone.
local function window_sums(key, current, buckets, prune)
  local flat = redis.call('HGETALL', key)
  local sums = { c = 0, f = 0, s = 0, r = 0, t = 0, d = 0, x = 0, F = {}, S = {} }
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
      local voted = string.sub(kind, 2, 2) == ':'
      if voted then
        sums[string.sub(kind, 1, 1)][string.sub(kind, 3)] = true
      else
        sums[kind] = sums[kind] + tonumber(flat[i + 1])
      end
    end
  end
  if prune and #expired > 0 then
    redis.call('HDEL', key, unpack(expired))
  end
  return sums
end

-- Counts into the current bucket. Its first call prunes what slid out of the window
-- and refreshes the TTLs, so the window stays O(buckets) and no call pays for
-- either more than once a bucket.
local function count(c, calls, failures, slows, rejections)
  local cfg = c.cfg
  local current = math.floor(c.now / cfg.window_bucket)
  local prefix = int(current) .. ':'
  local key = c.keys[2]
  if calls > 0 and redis.call('HINCRBY', key, prefix .. 'c', calls) == calls then
    window_sums(key, current, cfg.buckets, true)
    c.refresh = true
  end
  if failures > 0 then
    redis.call('HINCRBY', key, prefix .. 'f', failures)
  end
  if slows > 0 then
    redis.call('HINCRBY', key, prefix .. 's', slows)
  end
  if rejections > 0 and redis.call('HINCRBY', key, prefix .. 'x', rejections) == rejections then
    c.refresh = true
  end
end

-- The voters live in the window (a heartbeat within it), and the "live:" fields of
-- those that are not (to delete, where the call may write).
-- The state hash's fields (as load read them) named "<prefix><id>", each holding an
-- epoch ms, split at ``horizon``: those after it (id -> ms), and the names of the rest.
local function timed(c, prefix, horizon)
  local after, rest = {}, {}
  for field, value in pairs(c.h) do
    if string.sub(field, 1, #prefix) == prefix then
      if tonumber(value) > horizon then
        after[string.sub(field, #prefix + 1)] = tonumber(value)
      else
        rest[#rest + 1] = field
      end
    end
  end
  return after, rest
end

local function size(set)
  local n = 0
  for _ in pairs(set) do
    n = n + 1
  end
  return n
end

local function live_voters(c)
  local live, stale = timed(c, 'live:', c.now - c.cfg.buckets * c.cfg.window_bucket)
  return size(live), stale
end

local function streak_voters(voters)
  local set = {}
  for voter in string.gmatch(voters, '[^,]+') do
    set[voter] = true
  end
  return set
end

-- Whether ``votes`` distinct voters are a quorum now. A fraction counts the live
-- voters, and forgets those no longer live.
local function quorate(c, votes)
  local q = c.cfg.quorum
  if q == 1 then
    return true
  elseif q > 1 then
    return votes >= q
  end
  local live, stale = live_voters(c)
  if #stale > 0 then
    redis.call('HDEL', c.keys[1], unpack(stale))
  end
  return votes >= math.max(1, math.ceil(q * live - 1e-9))
end

-- A failure or a slow call of ``voter``, kept where a quorum reads it: the streak's
-- voters and the current bucket. Nothing is kept without a quorum.
local function vote(c, voter, failed, slow)
  if c.cfg.quorum == 1 or voter == '' then
    return
  end
  local prefix = int(math.floor(c.now / c.cfg.window_bucket)) .. ':'
  if failed then
    redis.call('HSET', c.keys[2], prefix .. 'F:' .. voter, 1)
    if not streak_voters(c.s.voters)[voter] then
      c.s.voters = c.s.voters == '' and voter or (c.s.voters .. ',' .. voter)
    end
  end
  if slow == 1 then
    redis.call('HSET', c.keys[2], prefix .. 'S:' .. voter, 1)
  end
end

-- "<process>=<ms>": the process isolates itself for that long from now; "<process>=0":
-- it ended its isolation. Isolations that ended are forgotten on the way.
local function isolation(c, marker)
  if marker == '' then
    return
  end
  local process, lasts = string.match(marker, '^(.+)=(%d+)$')
  local untill = c.now + tonumber(lasts)
  local _, gone = timed(c, 'isolated:', c.now)
  if #gone > 0 then
    redis.call('HDEL', c.keys[1], unpack(gone))
  end
  if untill > c.now then
    redis.call('HSET', c.keys[1], 'isolated:' .. process, int(untill))
  else
    redis.call('HDEL', c.keys[1], 'isolated:' .. process)
  end
end

-- A reply laid out as REPLY says, from its fields by name; then ``events``. Every
-- operation answers through here, so no reply can leave a field out or move one.
local function as_reply(fields, events, layout)
  local r = {}
  for i, field in ipairs(layout or REPLY) do
    local value = fields[field]
    if value == nil then
      error('reply without ' .. field)
    end
    r[i] = value
  end
  for i = 1, #events do
    r[#r + 1] = events[i]
  end
  return r
end

-- The reply shared by every operation: the verdict, then the view every caller
-- refreshes from it, then the JSON of the transitions this call made.
local function reply(c, verdict, extra)
  local s = c.s
  return as_reply({
    verdict = verdict, state = s.state, created_at = int(s.created_at),
    generation = int(s.generation), open_until = int(s.open_until), now = int(c.now),
    failures = int(s.failures), last_failure_at = int(s.last_failure_at),
    extra = extra or '', digest = c.stored,
  }, c.events)
end

local function unconfigured(c)
  return as_reply({
    verdict = 'unconfigured', state = 'closed', created_at = '0', generation = '0',
    open_until = '0', now = int(c.now), failures = '0', last_failure_at = '0', extra = '',
    digest = '',
  }, {})
end

-- acquire: asked before a call whenever the caller's local view cannot decide alone.
-- Moves open -> half_open once open_until has passed, and hands out half-open trial
-- leases, at most half_open_max_calls at once across the whole fleet.
-- ARGV[4]: lease id the caller will present to record
-- ARGV[5]: the latest version the caller has seen, "<created_at>:<generation>", or ""
-- verdict "admit": a normal call (closed or disabled); extra ""
-- verdict "trial": a half-open trial under lease ARGV[4]; extra: the lease's expiry (ms)
-- verdict "reject": extra: the epoch ms at which asking again may succeed ("" for
--                   forced_open: only an operator ends it)
local function acquire(keys, args)
  local c = begin(keys, args)
  if not load(c) then
    return unconfigured(c)
  end
  advance(c, args[5])
  local s, cfg = c.s, c.cfg
  if s.state == 'closed' or s.state == 'disabled' then
    save(c)
    return reply(c, 'admit')
  end
  if s.state == 'forced_open' then
    save(c)
    return reply(c, 'reject')
  end
  if s.state == 'open' then
    if c.now < s.open_until then
      save(c)
      return reply(c, 'reject', int(s.open_until))
    end
    to_half_open(c)
  end
  -- half_open: expired leases belong to callers that died or hung; free their slots.
  redis.call('ZREMRANGEBYSCORE', keys[3], '-inf', c.now)
  if redis.call('ZCARD', keys[3]) < cfg.half_open_max_calls then
    redis.call('ZADD', keys[3], c.now + cfg.half_open_lease, args[4])
    c.refresh = true
    save(c)
    return reply(c, 'trial', int(c.now + cfg.half_open_lease))
  end
  save(c)
  local earliest = redis.call('ZRANGE', keys[3], 0, 0, 'WITHSCORES')
  return reply(c, 'reject', earliest[2])
end

-- The counting of a whole record call, on the full state.
local function record_full(c, generation, lease_id, outcome, duration, batch, voter)
  local s, cfg = c.s, c.cfg
  local slow = (cfg.slow_call_duration > 0 and duration >= cfg.slow_call_duration) and 1 or 0
  local counting = s.state == 'closed' or s.state == 'disabled'
  local verdict = 'stale'

  -- Batched: successes a process counted locally since its last reply (all fast,
  -- closed), the calls it rejected, and the last failure it had seen: its successes
  -- came after that one, so they may end the streak only if no failure followed.
  local successes, rejections, seen = 0, 0, 0
  if batch ~= '' then
    local a, b, d = string.match(batch, '^(%d+):(%d+):(%d+)$')
    successes, rejections, seen = tonumber(a), tonumber(b), tonumber(d)
  end
  if rejections > 0 then
    count(c, 0, 0, 0, rejections)
  end
  if successes > 0 and counting and generation == s.generation then
    count(c, successes, 0, 0, 0)
    if s.last_failure_at == seen then
      s.failures = 0
      s.voters = ''
    end
  end

  if lease_id ~= '' then
    local held = redis.call('ZREM', c.keys[3], lease_id) == 1
    if held and s.state == 'half_open' and generation == s.generation then
      verdict = 'counted'
      if outcome == 'success' then
        count(c, 1, 0, slow, 0)
        s.trial_successes = s.trial_successes + 1
        if s.trial_successes >= cfg.success_threshold then
          to_closed(c, 'trial_succeeded')
        end
      elseif outcome == 'failure' then
        count(c, 1, 1, slow, 0)
        s.failures = s.failures + 1
        s.last_failure_at = c.now
        to_open(c, 'trial_failed')
      else
        verdict = 'released'
      end
    end
  elseif (outcome == 'success' or outcome == 'failure') and counting
      and generation == s.generation then
    verdict = 'counted'
    if outcome == 'success' then
      count(c, 1, 0, slow, 0)
      s.failures = 0
      s.voters = ''
    else
      count(c, 1, 1, slow, 0)
      s.failures = s.failures + 1
      s.last_failure_at = c.now
    end
    vote(c, voter, outcome == 'failure', slow)
    if s.state == 'closed' then
      -- Each condition must hold with a quorum of its own voters; without a quorum
      -- (quorate is then always true) the first that holds trips, as it always did.
      local reason = nil
      if s.failures >= cfg.failure_threshold and quorate(c, size(streak_voters(s.voters))) then
        reason = 'failure_threshold'
      elseif cfg.failure_rate_threshold >= 0 or cfg.slow_call_rate_threshold >= 0 then
        local current = math.floor(c.now / cfg.window_bucket)
        local sums = window_sums(c.keys[2], current, cfg.buckets, false)
        if sums.c >= cfg.minimum_calls then
          if cfg.failure_rate_threshold >= 0 and sums.f >= cfg.failure_rate_threshold * sums.c
              and quorate(c, size(sums.F)) then
            reason = 'failure_rate'
          elseif cfg.slow_call_rate_threshold >= 0
              and sums.s >= cfg.slow_call_rate_threshold * sums.c
              and quorate(c, size(sums.S)) then
            reason = 'slow_call_rate'
          end
        end
      end
      if reason then
        to_open(c, reason)
      end
    end
  end
  save(c)
  return reply(c, verdict)
end

-- The common case, on one HMGET and one HINCRBY: a fast success, or a batch of
-- them alone (a flush), in a closed breaker at the caller's version, its settings
-- stored. Nil when the call needs the full path.
local function record_fast(keys, args)
  local outcome, batch, voter = args[6], args[8], args[9] or ''
  if args[5] ~= '' or args[3] ~= '' or (outcome ~= 'success' and outcome ~= 'none')
      or (args[10] or '') ~= '' then
    return nil
  end
  local successes, seen = outcome == 'success' and 1 or 0, nil
  if batch ~= '' then
    local a, b, d = string.match(batch, '^(%d+):(%d+):(%d+)$')
    if b ~= '0' then
      return nil  -- rejections to count: the full path
    end
    successes, seen = successes + tonumber(a), d
  end
  local h = redis.call('HMGET', keys[1], 'state', 'generation', 'created_at', 'failures',
    'last_failure_at', 'settings', 'window_bucket', 'slow_call_duration',
    'failure_rate_threshold', 'slow_call_rate_threshold', 'voters')
  -- With a rate threshold, a success may trip too (the window slid, or reached
  -- minimum_calls): the full path weighs the window.
  if h[1] ~= 'closed' or not h[6] or h[3] .. ':' .. h[2] ~= args[4]
      or h[9] ~= '-1' or h[10] ~= '-1'
      or (outcome == 'success' and h[8] ~= '0' and tonumber(args[7]) >= tonumber(h[8])) then
    return nil
  end
  local now = time_now(args[1])
  -- A success ends the failure streak; a batch's successes only if no failure came
  -- after the last one its process had seen.
  local failures = h[4]
  if failures ~= '0' and (outcome == 'success' or h[5] == seen) then
    if h[11] and h[11] ~= '' then
      redis.call('HSET', keys[1], 'failures', '0', 'voters', '')
    else
      redis.call('HSET', keys[1], 'failures', '0')
    end
    failures = '0'
  end
  if voter ~= '' then  -- a heartbeat, due: a fractional quorum counts the live voters
    redis.call('HSET', keys[1], 'live:' .. voter, int(now))
  end
  local current = math.floor(now / tonumber(h[7]))
  if successes > 0 and redis.call('HINCRBY', keys[2], current .. ':c', successes) == successes then
    local more = redis.call('HMGET', keys[1], 'buckets', 'key_ttl')
    window_sums(keys[2], current, tonumber(more[1]), true)
    refresh_ttls({ keys = keys, cfg = { key_ttl = tonumber(more[2]) } })
  end
  local verdict = outcome == 'success' and 'counted' or 'stale'
  return as_reply({
    verdict = verdict, state = 'closed', created_at = h[3], generation = h[2],
    open_until = '0', now = now, failures = failures, last_failure_at = h[5], extra = '',
    digest = h[6],
  }, {})
end

-- record: the outcome of one call, and what a batching caller counted locally.
-- Decides every trip: consecutive failures, failure rate and slow-call rate over the
-- sliding window, and the half-open verdict.
-- ARGV[4]: the version the call was admitted under, "<created_at>:<generation>"
--          (outcomes of another version are stale, and ignored)
-- ARGV[5]: lease id of a half-open trial, or "" for a normal call
-- ARGV[6]: outcome: "success" | "failure" | "release" (a trial lease given back
--          unused) | "none" (only the batch)
-- ARGV[7]: the call's duration in ms (slow from slow_call_duration on)
-- ARGV[8]: the batch, "<successes>:<rejections>:<last_failure_at seen>", or ""
-- ARGV[9]: the caller's voter id, or "": given with failures and slow calls (its
--          votes, under a quorum) and with a call when its heartbeat is due (its
--          liveness, under a fractional quorum); optional
-- ARGV[10]: "<process>=<ms>" when the caller isolates itself for that long,
--          "<process>=0" when it ends its isolation, or ""; optional
-- verdict "counted", "released" or "stale"; extra ""
--
-- A fast success in a closed breaker, the common case, and a flush of batched ones
-- read the fields they need in one HMGET and increment one counter, and answer with
-- what they read (record_fast): they write the state only when a failure streak
-- ends, and refresh the TTLs and prune the window only on the first call of a bucket.
local function record(keys, args)
  local fast = record_fast(keys, args)
  if fast then
    return fast
  end
  local c = begin(keys, args)
  if not load(c) then
    return unconfigured(c)
  end
  advance(c, args[4])
  local created_at, generation = string.match(args[4], '^(%d+):(%d+)$')
  if not c.existed then
    generation = c.s.generation  -- the hash is new (a restart, a flush): count it there
  elseif tonumber(created_at) ~= c.s.created_at then
    generation = -1  -- admitted under another incarnation of the hash: stale
  end
  local voter = args[9] or ''
  if voter ~= '' and c.cfg.quorum < 1 then
    redis.call('HSET', keys[1], 'live:' .. voter, int(c.now))
    c.h['live:' .. voter] = int(c.now)
  end
  isolation(c, args[10] or '')
  return record_full(
    c, tonumber(generation), args[5], args[6], tonumber(args[7]), args[8], voter)
end

-- control: an operator action, seen by every process on its next call (and at once by
-- those that follow the events channel).
-- ARGV[4]: action: "reset" | "force_open" | "disable"
-- ARGV[5]: the latest version the caller has seen, or "" (an operator tool)
-- verdict "changed" or "unchanged"; extra ""
--   reset: closed, with every counter, the window, the leases and the failure times
--          cleared; it always counts as a transition, so in-flight outcomes of the old
--          generation are ignored and every process resyncs
--   force_open: every call is rejected until reset
--   disable: every call goes through and is still counted, but nothing trips
local function control(keys, args)
  local c = begin(keys, args)
  if not load(c) then
    return unconfigured(c)
  end
  advance(c, args[5])
  local action = args[4]
  local targets = { force_open = 'forced_open', disable = 'disabled' }
  if action == 'reset' then
    local _, isolated = timed(c, 'isolated:', math.huge)
    if #isolated > 0 then
      redis.call('HDEL', keys[1], unpack(isolated))  -- every process hears the reset
    end
    to_closed(c, 'reset')
  elseif targets[action] == nil then
    return redis.error_reply('unknown control action: ' .. action)
  elseif c.s.state == targets[action] then
    save(c)
    return reply(c, 'unchanged')
  else
    c.s.open_until = 0
    c.s.trial_successes = 0
    redis.call('DEL', keys[3])
    transition(c, targets[action], action)
  end
  save(c)
  return reply(c, 'changed')
end

-- snapshot: a read of one breaker for operators; it changes nothing (FCALL_RO), so an
-- open breaker whose open_until has passed still reads "open" (with nothing left to
-- wait): it turns half_open on the next call.
-- verdict "snapshot"; extra: the JSON object {opened_at, reopens, trial_successes,
-- leases, calls, failed, slow, retries, refused, rejected, settings, voters, live,
-- isolated, failure_voters, slow_voters}, the six counts summed over the live window;
-- settings: the ones every call runs with, as stored (defaults where none is);
-- voters: the current streak's, comma-separated; live: the voters live in the window;
-- isolated: {process: until ms} of the processes isolated now; failure_voters and
-- slow_voters: distinct voters of the window's failures and slow calls
local function snapshot(keys, args)
  local c = begin(keys, { args[1], '', '' })
  load(c)
  local s, cfg = c.s, c.cfg
  local sums = window_sums(keys[2], math.floor(c.now / cfg.window_bucket), cfg.buckets, false)
  local leases = redis.call('ZCOUNT', keys[3], '(' .. int(c.now), '+inf')
  local isolated = timed(c, 'isolated:', c.now)
  return reply(c, 'snapshot', cjson.encode({
    opened_at = s.opened_at, reopens = s.reopens, trial_successes = s.trial_successes,
    leases = leases, calls = sums.c, failed = sums.f, slow = sums.s,
    retries = sums.r, refused = sums.d, rejected = sums.x, settings = cfg,
    voters = s.voters, live = (live_voters(c)), isolated = isolated,
    failure_voters = size(sums.F), slow_voters = size(sums.S),
  }))
end

-- budget: may one more retry go out? Asked only when a caller is about to retry, so a
-- call that succeeds at once never pays for it. Two allowances add up:
--   * the ratio: retries granted on it may reach ratio x the fleet's first attempts in
--     the window. First attempts are the calls record counted minus the retries
--     granted here: a granted retry is counted at once, before its call is recorded,
--     so that concurrent callers never all see the same room;
--   * the floor, for a quiet service: a token bucket refilled at
--     min_retries_per_second, holding a quarter of a second of it (at least 1 token).
-- So N first attempts answered within d seconds get at most
-- ratio x N + max(1, rate / 4) + rate x d retries.
-- ARGV[4]: ratio: retries allowed per first attempt (0: only the floor)
-- ARGV[5]: the floor's rate: min_retries_per_second (0: no floor)
-- verdict "granted" or "refused"; extra: the JSON object {retries, requests, limit,
-- tokens} as they stood before this request
-- The window hash keeps, besides the counters: "<bucket>:t" retries granted on a floor
-- token (also counted in "<bucket>:r"), and the bucket itself as "floor:tokens" and
-- "floor:at" (epoch ms of its last refill).
local function budget(keys, args)
  local c = begin(keys, args)
  if not load(c) then
    return unconfigured(c)
  end
  local cfg = c.cfg
  local current = math.floor(c.now / cfg.window_bucket)
  local sums = window_sums(keys[2], current, cfg.buckets, false)
  local requests = math.max(0, sums.c - sums.r)
  local limit = tonumber(args[4]) * requests
  local rate = tonumber(args[5])
  local capacity = 0
  if rate > 0 then
    capacity = math.max(1, rate / 4)
  end
  local stored = redis.call('HMGET', keys[2], 'floor:tokens', 'floor:at')
  local tokens = capacity
  if stored[1] and stored[2] then
    local elapsed = math.max(0, c.now - tonumber(stored[2])) / 1000
    tokens = math.min(capacity, tonumber(stored[1]) + elapsed * rate)
  end
  local available = tokens
  local verdict = 'granted'
  local field = int(current) .. ':r'
  if sums.r - sums.t < limit then
    -- the ratio's room
  elseif tokens >= 1 then
    redis.call('HINCRBY', keys[2], int(current) .. ':t', 1)
    tokens = tokens - 1
  else
    verdict = 'refused'
    field = int(current) .. ':d'
  end
  if redis.call('HINCRBY', keys[2], field, 1) == 1 then
    c.refresh = true
  end
  -- %.17g: the fraction of a token refilled so far must survive the round trip.
  redis.call('HSET', keys[2], 'floor:tokens', string.format('%.17g', tokens), 'floor:at', int(c.now))
  save(c)
  return reply(c, verdict, cjson.encode({
    retries = sums.r, requests = requests, limit = limit, tokens = available,
  }))
end

-- The bulkhead: a limit on the calls in flight to one upstream, shared by the fleet.
-- KEYS (every bulkhead operation):
--   KEYS[1]: slots zset     <prefix>:{<name>}:slots          lease id -> expiry (ms)
--   KEYS[2]: bulkhead hash  <prefix>:{<name>}:bulkhead       limit (the last a taker
--            asked for), hold_ms (how long a lease is held, smoothed); an adaptive
--            limit's alimit, base_ms, tuned_at (see tune)
--   KEYS[3]: processes zset <prefix>:{<name>}:slots:procs    process id -> last seen
--            + 3 lease TTLs (ms)
--   KEYS[4]: waiters zset   <prefix>:{<name>}:slots:waiters  waiter id -> the end of
--            its wait (ms)
-- ARGV (every bulkhead operation; its own start at ARGV[4]):
--   ARGV[1]: now in epoch ms, or "" for Redis TIME
--   ARGV[2]: the calling process's id
--   ARGV[3]: the lease TTL in ms
-- Every reply: the fields named in SLOTS_REPLY, in its order.
-- A lease is a member of the slots zset scored by its expiry on Redis's clock: a
-- holder that dies stops renewing, and its lease is gone lease_ttl later, whatever
-- it did. Expired leases, processes and waiters are removed by the next operation,
-- before it counts.
local SLOTS_REPLY = {
  'verdict', 'in_use', 'limit', 'retry_after', 'processes', 'count',
}

local function slots_begin(keys, args)
  local b = { keys = keys, now = time_now(args[1]), ttl = tonumber(args[3]) }
  redis.call('ZREMRANGEBYSCORE', keys[1], '-inf', b.now)
  redis.call('ZREMRANGEBYSCORE', keys[3], '-inf', b.now)
  redis.call('ZREMRANGEBYSCORE', keys[4], '-inf', b.now)
  redis.call('ZADD', keys[3], b.now + 3 * b.ttl, args[2])
  return b
end

-- The reply; every key is kept for one TTL past the last lease, process or waiter.
local function slots_end(b, verdict, retry_after, count)
  local keys = b.keys
  local horizon = 3 * b.ttl
  local last = redis.call('ZRANGE', keys[4], -1, -1, 'WITHSCORES')
  if last[2] then
    horizon = math.max(horizon, tonumber(last[2]) - b.now)
  end
  for i = 1, 4 do
    redis.call('PEXPIRE', keys[i], int(horizon + b.ttl))
  end
  return as_reply({
    verdict = verdict, in_use = redis.call('ZCARD', keys[1]),
    limit = tonumber(redis.call('HGET', keys[2], 'limit')) or 0,
    retry_after = math.floor(retry_after), processes = redis.call('ZCARD', keys[3]),
    count = count,
  }, {}, SLOTS_REPLY)
end

-- take: one lease, if fewer than the limit are held.
-- ARGV[4]: the limit (an adaptive one: the first, until the fleet learnt one);
-- ARGV[5]: the lease id; ARGV[6]: a waiter id, or "" (the caller will not wait);
-- ARGV[7]: how long it waits at most (ms); ARGV[8]: "1" for an adaptive limit (the
-- one tune stored, rounded down), "" for a fixed one
-- verdict "granted"; or "full", with retry_after: the ms until a lease is likely to
-- come free (the mean hold over the limit, as leases end about limit / hold_ms per
-- ms; a quarter of the TTL before any lease was given back). A refused waiter is kept
-- until the end of its wait: a lease given back meanwhile is published for it.
local function take(keys, args)
  local b = slots_begin(keys, args)
  local limit = tonumber(args[4])
  if args[8] == '1' then
    limit = math.floor(tonumber(redis.call('HGET', keys[2], 'alimit')) or limit)
  end
  local waiter = args[6]
  redis.call('HSET', keys[2], 'limit', int(limit))
  if redis.call('ZCARD', keys[1]) < limit then
    redis.call('ZADD', keys[1], b.now + b.ttl, args[5])
    if waiter ~= '' then
      redis.call('ZREM', keys[4], waiter)
    end
    return slots_end(b, 'granted', 0, 1)
  end
  if waiter ~= '' then
    redis.call('ZADD', keys[4], b.now + tonumber(args[7]), waiter)
  end
  local hold = tonumber(redis.call('HGET', keys[2], 'hold_ms'))
  local retry_after = b.ttl / 4
  if hold then
    retry_after = math.max(1, hold / math.max(1, limit))
  end
  return slots_end(b, 'full', retry_after, 0)
end

-- give: leases back, each at most once (a lease already expired is not counted).
-- ARGV[4]: the channel that wakes waiters ("" for none: the embedded backend and the
-- fallback lane, whose waiters are all in this process); ARGV[5]: the bulkhead's name
-- (the message); ARGV[6..]: pairs of a lease id and how long it was held (ms)
-- verdict "given"; count: the leases that were still held.
local function give(keys, args)
  local b = slots_begin(keys, args)
  local given = 0
  for i = 6, #args, 2 do
    if redis.call('ZREM', keys[1], args[i]) == 1 then
      given = given + 1
      local held = tonumber(args[i + 1])
      local hold = tonumber(redis.call('HGET', keys[2], 'hold_ms'))
      if hold then
        held = 0.8 * hold + 0.2 * held
      end
      redis.call('HSET', keys[2], 'hold_ms', string.format('%.17g', held))
    end
  end
  local channel = args[4]
  if given > 0 and channel ~= '' and redis.call('ZCARD', keys[4]) > 0 then
    if string.find(channel, '{', 1, true) then
      redis.call('SPUBLISH', channel, args[5])
    else
      redis.call('PUBLISH', channel, args[5])
    end
  end
  return slots_end(b, 'given', 0, given)
end

-- renew: every lease a process holds, TTL from now, in one call.
-- ARGV[4..]: lease ids
-- verdict "renewed"; count: the leases renewed (those missing had expired: lost).
local function renew(keys, args)
  local b = slots_begin(keys, args)
  local renewed = 0
  for i = 4, #args do
    if redis.call('ZSCORE', keys[1], args[i]) then
      redis.call('ZADD', keys[1], b.now + b.ttl, args[i])
      renewed = renewed + 1
    end
  end
  return slots_end(b, 'renewed', 0, renewed)
end

-- tune: one process's latest latencies, folded into the fleet's adaptive limit (a
-- gradient rule after Netflix's concurrency-limits Gradient and Gradient2): the
-- limit moves towards limit x gradient + queue, where gradient = tolerance x base /
-- mean, kept within [0.5, 1]: 1 while calls take no longer than tolerance x the least
-- latency seen (the limit grows by queue), less as they queue up at the upstream.
-- Smoothed (the limit moves a share of the way each time), kept within [min, max],
-- and never grown while fewer than half of it are in flight (the callers, not the
-- upstream, hold it back).
-- ARGV[4]: min; ARGV[5]: max; ARGV[6]: the first limit; ARGV[7]: tolerance;
-- ARGV[8]: smoothing; ARGV[9]: queue; ARGV[10]: the samples' mean latency (ms);
-- ARGV[11]: the least of them (ms)
-- Stored in the bulkhead hash: alimit (the limit, fractional), base_ms (the least
-- latency seen, rising by 1 % a second so that an upstream grown slower for good is
-- learnt), tuned_at (ms). verdict "tuned"; count: the limit, rounded down.
local function tune(keys, args)
  local b = slots_begin(keys, args)
  local stored = redis.call('HMGET', keys[2], 'alimit', 'base_ms', 'tuned_at')
  local limit = tonumber(stored[1]) or tonumber(args[6])
  local mean, least = tonumber(args[10]), tonumber(args[11])
  local base = least
  if stored[2] then
    local drift = 1 + 0.01 * math.max(0, b.now - tonumber(stored[3])) / 1000
    base = math.min(tonumber(stored[2]) * drift, least)
  end
  local gradient = math.max(0.5, math.min(1, tonumber(args[7]) * base / mean))
  local target = limit * gradient + tonumber(args[9])
  if redis.call('ZCARD', keys[1]) < limit / 2 then
    target = math.min(target, limit)
  end
  local smoothing = tonumber(args[8])
  limit = limit * (1 - smoothing) + target * smoothing
  limit = math.max(tonumber(args[4]), math.min(tonumber(args[5]), limit))
  redis.call('HSET', keys[2], 'alimit', string.format('%.17g', limit),
    'base_ms', string.format('%.17g', base), 'tuned_at', int(b.now), 'limit', int(limit))
  return slots_end(b, 'tuned', 0, math.floor(limit))
end

-- occupancy: the leases held, the limit and the processes seen, changing nothing.
-- verdict "occupancy"; retry_after and count 0.
local function occupancy(keys, args)
  local now = time_now(args[1])
  return as_reply({
    verdict = 'occupancy', in_use = redis.call('ZCOUNT', keys[1], '(' .. int(now), '+inf'),
    limit = tonumber(redis.call('HGET', keys[2], 'limit')) or 0, retry_after = 0,
    processes = redis.call('ZCOUNT', keys[3], '(' .. int(now), '+inf'), count = 0,
  }, {}, SLOTS_REPLY)
end

-- registrations (the loader cuts here for the EVALSHA path; VERSION is its hash)
redis.register_function('fb_VERSION_acquire', acquire)
redis.register_function('fb_VERSION_record', record)
redis.register_function('fb_VERSION_control', control)
redis.register_function{
  function_name = 'fb_VERSION_snapshot', callback = snapshot, flags = { 'no-writes' },
}
redis.register_function('fb_VERSION_budget', budget)
redis.register_function('fb_VERSION_take', take)
redis.register_function('fb_VERSION_give', give)
redis.register_function('fb_VERSION_renew', renew)
redis.register_function('fb_VERSION_tune', tune)
redis.register_function{
  function_name = 'fb_VERSION_occupancy', callback = occupancy, flags = { 'no-writes' },
}
