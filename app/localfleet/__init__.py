"""A fleet on this machine, and its Redis: ``fleetbreaker fleet`` starts gateways behind
nginx (``fleet``, ``services``) on a Redis server, Cluster or Sentinel set of its own
(``nodes``, ``cluster``, ``sentinel``), on ports from ``ports``, in folders that the
next start removes when their owner was killed (``tempdirs``). Imports ``config`` only:
the gateways it starts are processes, never imported."""
