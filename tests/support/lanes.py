"""The fallback lane as a backend of the test matrix: breakers whose every decision
runs on a ``LocalEngine``, the library on lupa over the fallback's own store.

In production that engine decides only while Redis cannot be reached, and never
answers a snapshot or an operator (those need the fleet's state). Put behind a
``Backend`` of kind "fallback", it answers everything, so every behaviour test and
the model test hold its Lua and its stand-ins for Redis's commands to the same rules
as Redis's. How the engine switches lanes in an outage is tested in
tests/test_backend_outage.py.
"""

from __future__ import annotations

from typing import Any

import pytest

from breaker import BreakerConfig
from breaker._store.backend import Backend
from breaker._store.local import LocalEngine
from breaker._types import SCRIPT_NAMES

#: The harnesses' breakers (library and gateway) are no test of timeouts, and their
#: clock is a ManualClock: one command slowed past the default 0.25 s by a loaded
#: machine (a Cluster's first call loads the library on every primary) would leave
#: the backend backing off for the rest of the test, since that clock never moves
#: on its own.
HARNESS_BACKEND_TIMEOUT = 5.0


def harness_config(**settings: Any) -> BreakerConfig:
    """A ``BreakerConfig`` as the harness's breakers get theirs: ``backend_timeout`` is
    ``HARNESS_BACKEND_TIMEOUT`` unless the test sets one (a test of timeouts does)."""
    settings.setdefault("backend_timeout", HARNESS_BACKEND_TIMEOUT)
    return BreakerConfig(**settings)


class EngineClient:
    """The client calls a ``Backend`` makes (FCALL, FUNCTION LOAD), answered by a
    ``LocalEngine``; and the few reads and writes tests make of a lane's keys."""

    def __init__(self, engine: LocalEngine) -> None:
        self.engine = engine

    def execute_command(self, *command: Any) -> Any:
        if command[0] == "FUNCTION":
            return b"OK"  # the engine loaded the library when it was made
        _, function, count, *rest = command
        operation = next(name for name in SCRIPT_NAMES if function.endswith(f"_{name}"))
        return self.engine.run(operation, list(rest[:count]), list(rest[count:]))

    def hgetall(self, key: str) -> dict[bytes, bytes]:
        flat = self.engine.command("HGETALL", key)
        return dict(zip(flat[::2], flat[1::2], strict=True))

    def hset(self, key: str, mapping: dict[str, str]) -> int:
        pairs = [item for pair in mapping.items() for item in pair]
        return int(self.engine.command("HSET", key, *pairs))

    def delete(self, *keys: str) -> int:
        return int(self.engine.command("DEL", *keys))

    # Redis's own, which the lane never needs: a test that reads them is Redis's.
    def pttl(self, key: str) -> int:
        pytest.skip("the fallback lane's store tells no TTL")

    def scan_iter(self, match: str) -> list[str]:
        pytest.skip("the fallback lane's store lists no keys")

    def function_load(self, *args: Any, **kwargs: Any) -> Any:
        pytest.skip("the fallback lane loads no FUNCTION library")

    def script_load(self, *args: Any) -> Any:
        pytest.skip("the fallback lane loads no scripts")


def fallback_backend(engine: LocalEngine) -> Backend:
    """A backend whose shared lane is ``engine``."""
    return Backend(EngineClient(engine), "fallback", timeout=None)
