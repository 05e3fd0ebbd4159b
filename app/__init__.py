"""The fleetbreaker gateway service (built on the ``breaker`` library).

>>> from app import create_app
>>> app = create_app()     # reads BREAKER_* from the environment

``app`` is the proxy's; while it runs, it serves the admin API and the dashboard on a
listener of their own (``[gateway] admin_host``, ``admin_port``).

The names below are imported when first asked for: they need the ``gateway`` extra
(FastAPI, pydantic-settings, ...), and the CLI of this package (``cli``) runs its
Redis commands on an install without it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .config.sections import ConfigError
    from .config.settings import GatewayConfig, load_config
    from .server.main import create_app

__all__ = ["ConfigError", "GatewayConfig", "create_app", "load_config"]

#: Where each of ``__all__`` lives.
_MODULE_OF = {
    "ConfigError": ".config.sections",
    "GatewayConfig": ".config.settings",
    "create_app": ".server.main",
    "load_config": ".config.settings",
}


def __getattr__(name: str) -> Any:
    if name not in _MODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_MODULE_OF[name], __name__), name)
    globals()[name] = value
    return value
