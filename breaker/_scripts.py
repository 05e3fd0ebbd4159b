"""Loads the Lua scripts and registers them per Redis client.

Each script is ``lua/_prelude.lua`` followed by ``lua/<name>.lua``. ``register_script``
gives an object that runs EVALSHA and falls back to SCRIPT LOAD on NOSCRIPT, so a
``SCRIPT FLUSH`` or a restarted Redis costs one extra round trip, never an error.

The sources live in the top-level ``lua/`` folder. A wheel ships them as the package
``breaker._lua``; a checkout has them next to ``breaker/``. Both are found, so the
source tree imports whether fleetbreaker is installed from it or not.
"""

from __future__ import annotations

import importlib.resources
from dataclasses import dataclass
from functools import cache
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

from ._types import SCRIPT_NAMES, ScriptName

_PRELUDE = "_prelude"


@cache
def lua_folder() -> Traversable:
    """Where the ``.lua`` files are: the wheel's ``breaker._lua``, else the checkout's
    ``lua/`` beside this package."""
    try:
        return importlib.resources.files("breaker._lua")
    except ModuleNotFoundError:
        checkout = Path(__file__).resolve().parent.parent / "lua"
        if not (checkout / f"{_PRELUDE}.lua").is_file():
            raise
        return checkout


@cache
def script_source(name: ScriptName) -> str:
    """The full source of script ``name``: the prelude, then the script itself."""
    if name not in SCRIPT_NAMES:
        raise ValueError(f"no such breaker script: {name!r}")
    folder = lua_folder()
    prelude = folder.joinpath(f"{_PRELUDE}.lua").read_text(encoding="utf-8")
    body = folder.joinpath(f"{name}.lua").read_text(encoding="utf-8")
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

    def get(self, name: ScriptName) -> Any:
        script: Any = getattr(self, name)
        return script
