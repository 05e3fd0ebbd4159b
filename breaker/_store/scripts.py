"""The Lua library, and the two ways a server runs it.

``lua/fleetbreaker.lua`` holds every operation. It runs as a Redis FUNCTION library,
loaded once per server and versioned by a hash of its source (the library
``fleetbreaker_<version>``, its functions ``fb_<version>_<operation>``), so that a
process only ever calls the code it was shipped with; or, where a server refuses
FUNCTION (Redis < 7, an ACL, some managed services), as one EVALSHA script per
operation: the library up to its registrations, then ``return <operation>(KEYS,
ARGV)``.

The sources live in the top-level ``lua/`` folder. A wheel ships them as the package
``breaker._lua``; a checkout has them next to ``breaker/``. Both are found, so the
source tree imports whether fleetbreaker is installed from it or not.
"""

from __future__ import annotations

import hashlib
import importlib.resources
from functools import cache
from importlib.resources.abc import Traversable
from pathlib import Path

from .._types import SCRIPT_NAMES, ScriptName

LIBRARY_FILE = "fleetbreaker.lua"
_MARKER = "-- registrations"
_PLACEHOLDER = "VERSION"


@cache
def lua_folder() -> Traversable:
    """Where the ``.lua`` files are: the wheel's ``breaker._lua``, else the checkout's
    ``lua/`` beside this package."""
    try:
        return importlib.resources.files("breaker._lua")
    except ModuleNotFoundError:
        checkout = Path(__file__).resolve().parents[2] / "lua"
        if not (checkout / LIBRARY_FILE).is_file():
            raise
        return checkout


@cache
def _source() -> str:
    return lua_folder().joinpath(LIBRARY_FILE).read_text(encoding="utf-8")


@cache
def version() -> str:
    """The library's version: a hash of its source, in every name it registers."""
    return hashlib.sha1(_source().encode(), usedforsecurity=False).hexdigest()[:12]


def library_name() -> str:
    return f"fleetbreaker_{version()}"


def function_name(operation: ScriptName) -> str:
    """The FUNCTION that runs ``operation`` in this version of the library."""
    return f"fb_{version()}_{operation}"


@cache
def library_source() -> str:
    """The library as FUNCTION LOAD takes it: named after its version."""
    source = _source().replace(_PLACEHOLDER, version())
    first, rest = source.split("\n", 1)
    if not first.startswith("#!lua name=fleetbreaker"):
        raise ValueError(f"{LIBRARY_FILE} must start with its #!lua line")
    return f"#!lua name={library_name()}\n{rest}"


@cache
def script_source(operation: ScriptName) -> str:
    """The EVALSHA script of ``operation``: the library's code, then a call of it."""
    if operation not in SCRIPT_NAMES:
        raise ValueError(f"no such breaker operation: {operation!r}")
    body = _source().split("\n", 1)[1]
    code = body[: body.index(_MARKER)]
    return f"{code}\nreturn {operation}(KEYS, ARGV)\n"
