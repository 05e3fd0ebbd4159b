"""What the gateway tells: its Prometheus metrics (``metrics``), the feed of breaker
transitions streamed to admin clients (``events``), and the log of refused admin tokens
(``refusals``). Imports nothing else of the app."""
