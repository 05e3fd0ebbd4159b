"""``fleetbreaker``, the command: ``command`` parses it and runs one of the commands,
``serving`` those that run the gateway (``serve``, ``demo-upstream``, ``fleet``),
``breakers`` those that inspect or control breakers in Redis (``status``, ``reset``,
``open``, ``disable``) and ``watch`` the one that follows their transitions.

The Redis commands need only the library: nothing here imports the gateway's stack
(FastAPI, pydantic-settings, uvicorn, ...) but inside the commands that run it.
"""

from __future__ import annotations

from .command import main

__all__ = ["main"]
