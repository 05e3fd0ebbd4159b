"""The bulkhead: a limit on the calls in flight to one upstream, shared by the fleet
through leases in Redis (``lua/fleetbreaker.lua``'s take, give, renew, occupancy)."""
