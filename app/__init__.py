"""The fleetbreaker gateway service (built on the ``breaker`` library)."""
