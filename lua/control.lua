-- control: an operator action, seen by every process on its next call (and at once
-- by the processes that follow the events channel).
--
-- KEYS[1..3], ARGV[1..6]: see _prelude.lua (an operator tool sends "" for 4..6)
-- ARGV[7]: action: "reset" | "force_open" | "disable"
-- returns: {verdict, state, created_at, generation, open_until, now, failures,
--           last_failure_at, extra, event_json...}
--   verdict "changed" or "unchanged"; extra is ""
--   reset: closed with every counter, the window and the leases cleared; it always
--          counts as a transition, so in-flight outcomes of the old generation are
--          ignored and every process resyncs
--   force_open: every call is rejected until reset
--   disable: every call goes through and is still counted, but nothing trips

local action = ARGV[7]
local targets = { force_open = 'forced_open', disable = 'disabled' }

if action == 'reset' then
  to_closed('reset')
elseif targets[action] == nil then
  return redis.error_reply('unknown control action: ' .. action)
elseif S.state == targets[action] then
  return reply('unchanged')
else
  S.open_until = 0
  S.trial_successes = 0
  redis.call('DEL', KEYS[3])
  transition(targets[action], action)
end
save_state()
return reply('changed')
