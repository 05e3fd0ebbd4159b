"""The admin listener's side: the admin API (``api``), health and metrics (``ops``),
the dashboard (``dashboard``, its page in ``static/``) and the API docs (``docs``).
Imports ``proxy``, ``telemetry`` and ``config``."""
