-- wrk: count the answers by the replica that served them (X-Fleetbreaker-Instance,
-- "<replica>/<pid>") and by status; `done` prints one line the test reads:
-- COUNTS broken=<n> broken_ok=<n> healthy_ok=<n> healthy_bad=<n> unknown=<n> ...
-- The broken replica is named by the BROKEN environment variable ("gateway-1/").
local broken_prefix = os.getenv("BROKEN") or "gateway-1/"
broken, broken_ok, healthy_ok, healthy_bad, unknown = 0, 0, 0, 0, 0

function response(status, headers, body)
  local instance = headers["x-fleetbreaker-instance"] or headers["X-Fleetbreaker-Instance"] or ""
  if instance == "" then
    unknown = unknown + 1
  elseif string.sub(instance, 1, #broken_prefix) == broken_prefix then
    broken = broken + 1
    if status == 200 then
      broken_ok = broken_ok + 1
    end
  elseif status == 200 then
    healthy_ok = healthy_ok + 1
  else
    healthy_bad = healthy_bad + 1
  end
end

local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function done(summary, latency, requests)
  local sums = { broken = 0, broken_ok = 0, healthy_ok = 0, healthy_bad = 0, unknown = 0 }
  for _, thread in ipairs(threads) do
    for name in pairs(sums) do
      sums[name] = sums[name] + thread:get(name)
    end
  end
  io.write(string.format(
    "COUNTS broken=%d broken_ok=%d healthy_ok=%d healthy_bad=%d unknown=%d requests=%d seconds=%.3f\n",
    sums.broken, sums.broken_ok, sums.healthy_ok, sums.healthy_bad, sums.unknown,
    summary.requests, summary.duration / 1e6))
end
