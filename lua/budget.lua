-- budget: may one more retry go out? Asked only when a caller is about to retry, so
-- a call that succeeds at once never pays for it. The fleet's retries in the window
-- may reach ratio x its first attempts there, or the floor, whichever is larger.
-- First attempts are the calls record.lua counted minus the retries granted here: a
-- granted retry is counted at once, before its call is recorded, so that concurrent
-- callers never all see the same room.
--
-- KEYS[1..3], ARGV[1..4]: see _prelude.lua
-- ARGV[5]: window bucket width in ms
-- ARGV[6]: number of buckets in the window
-- ARGV[7]: ratio: retries allowed per first attempt (0 disallows all but the floor)
-- ARGV[8]: floor: retries the window always allows (min_retries_per_second x window)
-- returns: {verdict, state, created_at, generation, open_until, now, failures,
--           last_failure_at, extra}; verdict "granted" or "refused"; extra is the JSON
--           object {retries, requests, limit} as they stood before this request

local bucket_ms = tonumber(ARGV[5])
local current = math.floor(NOW / bucket_ms)
local sums = window_sums(current, tonumber(ARGV[6]), false)
local requests = math.max(0, sums.c - sums.r)
local limit = math.max(tonumber(ARGV[7]) * requests, tonumber(ARGV[8]))

local verdict = 'refused'
local field = int(current) .. ':d'
if sums.r < limit then
  verdict = 'granted'
  field = int(current) .. ':r'
end
redis.call('HINCRBY', KEYS[2], field, 1)
redis.call('PEXPIRE', KEYS[2], TTL_MS)
return reply(verdict, cjson.encode({ retries = sums.r, requests = requests, limit = limit }))
