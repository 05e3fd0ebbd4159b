"""The only code that runs a bulkhead's calls: on the shared lane (Redis, or the
embedded backend) or the fallback lane (the same Lua, in this process), blocking or
awaited. The steps (``Bulkhead._taking`` and the others) decide; this does the I/O."""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

from .._clock import Clock
from .._decisions.steps import Call
from .._exceptions import BackendUnavailableError
from .._store.backend import Backend
from .._store.local import LocalEngine

#: A bulkhead operation: yields the calls it needs, receives each raw reply.
Steps = Generator[Call, list[Any], Any]


class Lanes:
    """One bulkhead's keys on its two lanes, and the drivers of its steps."""

    def __init__(
        self, name: str, keys: list[str], shared: Backend, local: LocalEngine, clock: Clock
    ) -> None:
        self._name = name
        self._keys = keys
        self.shared = shared
        self._local = local
        self._clock = clock

    def drive(self, steps: Steps) -> Any:
        """Run ``steps`` with blocking calls; a shared call that fails is thrown in."""
        try:
            call = next(steps)
            while True:
                try:
                    raw = self.run(call)
                except BackendUnavailableError as exc:
                    call = steps.throw(exc)
                else:
                    call = steps.send(raw)
        except StopIteration as done:
            return done.value

    async def adrive(self, steps: Steps) -> Any:
        """``drive`` with awaits: nothing here blocks the event loop (the fallback
        lane's calls take tens of microseconds, and run in place)."""
        try:
            call = next(steps)
            while True:
                try:
                    raw = self.run(call) if call.lane == "local" else await self.arun(call)
                except BackendUnavailableError as exc:
                    call = steps.throw(exc)
                else:
                    call = steps.send(raw)
        except StopIteration as done:
            return done.value

    def run(self, call: Call) -> list[Any]:
        if call.lane == "local":
            return self._local.run(call.script, self._keys, call.args)
        return self.shared.run(
            self._name, call.script, self._keys, call.args, self._clock.monotonic()
        )

    async def arun(self, call: Call) -> list[Any]:
        return await self.shared.arun(
            self._name, call.script, self._keys, call.args, self._clock.monotonic()
        )
