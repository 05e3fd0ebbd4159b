-- snapshot: a read of one breaker for operators; it changes nothing, so an open
-- breaker whose open_until has passed still reads "open" (with nothing left to wait):
-- it turns half_open on the next call.
--
-- KEYS[1..3], ARGV[1..4]: see _prelude.lua
-- ARGV[5]: window bucket width in ms
-- ARGV[6]: number of buckets in the window
-- returns: {verdict, state, created_at, generation, open_until, now, failures,
--           last_failure_at, extra}; verdict "snapshot"; extra is the JSON object
--           {opened_at, reopens, trial_successes, leases, calls, failed, slow}
--           where calls, failed and slow are summed over the live window

local bucket_ms = tonumber(ARGV[5])
local oldest = math.floor(NOW / bucket_ms) - tonumber(ARGV[6]) + 1
local flat = redis.call('HGETALL', KEYS[2])
local sums = { c = 0, f = 0, s = 0 }
for i = 1, #flat, 2 do
  local sep = string.find(flat[i], ':', 1, true)
  if tonumber(string.sub(flat[i], 1, sep - 1)) >= oldest then
    local kind = string.sub(flat[i], sep + 1)
    sums[kind] = sums[kind] + tonumber(flat[i + 1])
  end
end
local leases = redis.call('ZCOUNT', KEYS[3], '(' .. int(NOW), '+inf')
return reply('snapshot', cjson.encode({
  opened_at = S.opened_at, reopens = S.reopens, trial_successes = S.trial_successes,
  leases = leases, calls = sums.c, failed = sums.f, slow = sums.s,
}))
