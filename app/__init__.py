"""The fleetbreaker gateway service (built on the ``breaker`` library).

>>> from app import create_app
>>> app = create_app()     # reads BREAKER_* from the environment

``app`` is the proxy's; while it runs, it serves the admin API and the dashboard on a
listener of their own (``[gateway] admin_host``, ``admin_port``).
"""

from __future__ import annotations

from .main import create_app
from .settings import ConfigError, GatewayConfig, load_config

__all__ = ["ConfigError", "GatewayConfig", "create_app", "load_config"]
