-- budget: may one more retry go out? Asked only when a caller is about to retry, so
-- a call that succeeds at once never pays for it. Two allowances add up:
--   * the ratio: retries granted on it may reach ratio x the fleet's first attempts in
--     the window. First attempts are the calls record.lua counted minus the retries
--     granted here: a granted retry is counted at once, before its call is recorded,
--     so that concurrent callers never all see the same room;
--   * the floor, for a quiet service: a token bucket refilled at
--     min_retries_per_second, holding a quarter of a second of it (at least 1 token).
--     A burst of failures spends that, plus what refills while it lasts: never a
--     whole window's worth at once.
-- So N first attempts answered within d seconds get at most
-- ratio x N + max(1, rate / 4) + rate x d retries.
--
-- KEYS[1..3], ARGV[1..6]: see _prelude.lua
-- ARGV[7]: ratio: retries allowed per first attempt (0: only the floor)
-- ARGV[8]: the floor's rate: min_retries_per_second (0: no floor)
-- returns: {verdict, state, created_at, generation, open_until, now, failures,
--           last_failure_at, extra}; verdict "granted" or "refused"; extra is the JSON
--           object {retries, requests, limit, tokens} as they stood before this
--           request (limit: the ratio's room; tokens: the floor's)
--
-- The window hash keeps, besides the counters: "<bucket>:t" retries granted on a
-- floor token (also counted in "<bucket>:r"), and the bucket itself as "floor:tokens"
-- and "floor:at" (epoch ms of its last refill).

local current = math.floor(NOW / S.window_bucket)
local sums = window_sums(current, S.buckets, false)
local requests = math.max(0, sums.c - sums.r)
local limit = tonumber(ARGV[7]) * requests
local rate = tonumber(ARGV[8])

local capacity = 0
if rate > 0 then
  capacity = math.max(1, rate / 4)
end
local stored = redis.call('HMGET', KEYS[2], 'floor:tokens', 'floor:at')
local tokens = capacity
if stored[1] and stored[2] then
  local elapsed = math.max(0, NOW - tonumber(stored[2])) / 1000
  tokens = math.min(capacity, tonumber(stored[1]) + elapsed * rate)
end

local available = tokens
local verdict = 'granted'
local prefix = int(current) .. ':'
if sums.r - sums.t < limit then
  redis.call('HINCRBY', KEYS[2], prefix .. 'r', 1)
elseif tokens >= 1 then
  redis.call('HINCRBY', KEYS[2], prefix .. 'r', 1)
  redis.call('HINCRBY', KEYS[2], prefix .. 't', 1)
  tokens = tokens - 1
else
  verdict = 'refused'
  redis.call('HINCRBY', KEYS[2], prefix .. 'd', 1)
end
-- %.17g: the fraction of a token refilled so far must survive the round trip.
redis.call('HSET', KEYS[2], 'floor:tokens', string.format('%.17g', tokens), 'floor:at', int(NOW))
redis.call('PEXPIRE', KEYS[2], TTL_MS)
return reply(verdict, cjson.encode({
  retries = sums.r, requests = requests, limit = limit, tokens = available,
}))
