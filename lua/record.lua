-- record: the outcome of one call, plus any successes a batching caller counted
-- locally since its last reply. Decides every trip: consecutive failures, failure
-- rate and slow-call rate over the sliding window, and the half-open verdict.
--
-- KEYS[1..3], ARGV[1..6]: see _prelude.lua (ARGV[5..6]: the window's buckets)
-- ARGV[7]:  generation the call was admitted under (stale outcomes are ignored)
-- ARGV[8]:  lease id of a half-open trial, or "" for a normal call
-- ARGV[9]:  outcome: "success" | "failure" | "release" (a cancelled trial) | "none"
-- ARGV[10]: "1" if the call was slow, else "0"
-- ARGV[11]: batched successes to count first (closed-state calls, all fast)
-- ARGV[12]: last_failure_at the batching caller saw last: its successes came after
--           that failure, so they may reset the streak only if no failure followed
-- ARGV[13]: failure_threshold (consecutive failures that trip)
-- ARGV[14]: success_threshold (trial successes that close)
-- ARGV[15]: failure_rate_threshold in 0..1, or -1 when off
-- ARGV[16]: slow_call_rate_threshold in 0..1, or -1 when off
-- ARGV[17]: minimum_calls in the window before a rate can trip
-- ARGV[18]: reset_timeout in ms
-- ARGV[19]: reset_timeout_max in ms, or 0 when the open time does not grow
-- ARGV[20]: reset_timeout_multiplier
-- ARGV[21]: reset_timeout_jitter (fraction of the open time added at most)
-- ARGV[22]: jitter sample in [0, 1), drawn by the caller
-- returns: {verdict, state, created_at, generation, open_until, now, failures,
--           last_failure_at, extra, event_json...}
--   verdict "counted", "released" (a trial lease given back unused) or "stale";
--   extra is ""

local generation = tonumber(ARGV[7])
local lease_id = ARGV[8]
local outcome = ARGV[9]
local slow = tonumber(ARGV[10])
local batched = tonumber(ARGV[11])
local seen_last_failure_at = tonumber(ARGV[12])
local failure_threshold = tonumber(ARGV[13])
local success_threshold = tonumber(ARGV[14])
local failure_rate = tonumber(ARGV[15])
local slow_rate = tonumber(ARGV[16])
local minimum_calls = tonumber(ARGV[17])
local bucket_ms = S.window_bucket
local buckets = S.buckets

local function open(reason)
  to_open(reason, tonumber(ARGV[18]), tonumber(ARGV[19]), tonumber(ARGV[20]),
    tonumber(ARGV[21]), tonumber(ARGV[22]))
end

-- The window: fields "<bucket>:c" (calls), "<bucket>:f" (failures), "<bucket>:s"
-- (slow calls); budget.lua adds "<bucket>:r" and "<bucket>:d" (retries granted and
-- refused). The first call of each bucket prunes the buckets that slid out, so its
-- size stays O(buckets), whatever the call rate, and the others skip reading it
-- unless a rate threshold needs the sums.
local current = math.floor(NOW / bucket_ms)
local function count(calls, failures, slows)
  local prefix = int(current) .. ':'
  if redis.call('HINCRBY', KEYS[2], prefix .. 'c', calls) == calls then
    window_sums(current, buckets, true)
  end
  if failures > 0 then
    redis.call('HINCRBY', KEYS[2], prefix .. 'f', failures)
  end
  if slows > 0 then
    redis.call('HINCRBY', KEYS[2], prefix .. 's', slows)
  end
end

local counting = S.state == 'closed' or S.state == 'disabled'

if batched > 0 and counting and generation == S.generation then
  count(batched, 0, 0)
  if S.last_failure_at == seen_last_failure_at then
    S.failures = 0
  end
end

local verdict = 'stale'
if lease_id ~= '' then
  local held = redis.call('ZREM', KEYS[3], lease_id) == 1
  if held and S.state == 'half_open' and generation == S.generation then
    verdict = 'counted'
    if outcome == 'success' then
      count(1, 0, slow)
      S.trial_successes = S.trial_successes + 1
      if S.trial_successes >= success_threshold then
        to_closed('trial_succeeded')
      end
    elseif outcome == 'failure' then
      count(1, 1, slow)
      S.failures = S.failures + 1
      S.last_failure_at = NOW
      open('trial_failed')
    else
      verdict = 'released'
    end
  end
elseif (outcome == 'success' or outcome == 'failure') and counting
    and generation == S.generation then
  verdict = 'counted'
  if outcome == 'success' then
    count(1, 0, slow)
    S.failures = 0
  else
    count(1, 1, slow)
    S.failures = S.failures + 1
    S.last_failure_at = NOW
  end
  if S.state == 'closed' then
    if S.failures >= failure_threshold then
      open('failure_threshold')
    elseif failure_rate >= 0 or slow_rate >= 0 then
      local sums = window_sums(current, buckets, false)
      if sums.c >= minimum_calls then
        if failure_rate >= 0 and sums.f >= failure_rate * sums.c then
          open('failure_rate')
        elseif slow_rate >= 0 and sums.s >= slow_rate * sums.c then
          open('slow_call_rate')
        end
      end
    end
  end
end

if verdict == 'counted' or batched > 0 then
  save_state()
end
return reply(verdict)
