-- snapshot: a read of one breaker for operators; it changes nothing, so an open
-- breaker whose open_until has passed still reads "open" (with nothing left to wait):
-- it turns half_open on the next call.
--
-- KEYS[1..3], ARGV[1..6]: see _prelude.lua (an operator tool sends "" for 4..6: the
-- window is then summed with the breaker's stored bucket settings)
-- returns: {verdict, state, created_at, generation, open_until, now, failures,
--           last_failure_at, extra}; verdict "snapshot"; extra is the JSON object
--           {opened_at, reopens, trial_successes, leases, calls, failed, slow, retries,
--           refused, rejected} where the last six are summed over the live window

local sums = window_sums(math.floor(NOW / S.window_bucket), S.buckets, false)
local leases = redis.call('ZCOUNT', KEYS[3], '(' .. int(NOW), '+inf')
return reply('snapshot', cjson.encode({
  opened_at = S.opened_at, reopens = S.reopens, trial_successes = S.trial_successes,
  leases = leases, calls = sums.c, failed = sums.f, slow = sums.s,
  retries = sums.r, refused = sums.d, rejected = sums.x,
}))
