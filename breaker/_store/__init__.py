"""The store: everything that talks to Redis, or stands in for it.

Which Redis a client reaches (``topology``, ``urls``), the Lua library and its
loading (``scripts``), the arguments and replies of each script (``wire``, pure),
the shared lane (``backend``, ``connections``), the in-process fallback lane that runs
the same Lua while Redis is away (``local``), and the events: the hub that hands
replies and pub/sub messages to every local view (``events``, ``sharded`` on a
Cluster) and the public follower (``follower``). Nothing here decides a transition.
"""
