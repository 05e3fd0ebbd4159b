"""``fleetbreaker``, the command (``command``).

The Redis commands need only the library: nothing here imports the gateway's stack
(FastAPI, pydantic-settings, uvicorn, ...) but inside the commands that run it.
"""

from __future__ import annotations

from .command import main

__all__ = ["main"]
