"""The proxy: what one worker builds at startup (``runtime``: a route per upstream, with
its client and breaker), the ``/proxy`` routes (``routes``), what is forwarded and how
(``forwarding``, ``upload``), and every error mapped to its HTTP answer (``errors``).
Imports ``config`` and ``telemetry``."""
