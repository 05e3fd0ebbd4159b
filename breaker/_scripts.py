"""Loads the Lua scripts and registers them per Redis client.

Each script is ``lua/_prelude.lua`` followed by ``lua/<name>.lua``. ``register_script``
gives an object that runs EVALSHA and falls back to SCRIPT LOAD on NOSCRIPT, so a
``SCRIPT FLUSH`` or a restarted Redis costs one extra round trip, never an error.
"""

from __future__ import annotations

import importlib.resources
from dataclasses import dataclass
from functools import cache
from typing import Any

SCRIPT_NAMES = ("acquire", "budget", "control", "record", "snapshot")
_PRELUDE = "_prelude"


@cache
def script_source(name: str) -> str:
    """The full source of script ``name``: the prelude, then the script itself."""
    if name not in SCRIPT_NAMES:
        raise ValueError(f"no such breaker script: {name!r}")
    lua = importlib.resources.files("breaker._lua")
    prelude = lua.joinpath(f"{_PRELUDE}.lua").read_text(encoding="utf-8")
    body = lua.joinpath(f"{name}.lua").read_text(encoding="utf-8")
    return f"{prelude}\n{body}"


@dataclass(frozen=True, slots=True)
class Scripts:
    """The breaker scripts registered on one client (sync ``Script`` or ``AsyncScript``)."""

    acquire: Any
    budget: Any
    control: Any
    record: Any
    snapshot: Any

    @classmethod
    def register(cls, client: Any) -> Scripts:
        return cls(*(client.register_script(script_source(name)) for name in SCRIPT_NAMES))
