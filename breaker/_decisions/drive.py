"""The drivers: the only code that runs an operation's calls, blocking or awaited.

``run`` and ``arun`` take the same steps (``_decisions.engine.Steps``) and differ only in how
they reach the shared lane: a blocking call, or an await (the embedded backend then
runs on a thread of its own). The local lane is the in-process fallback, whose
scripts take tens of microseconds: both call it directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any, TypeVar

from .._exceptions import BackendUnavailableError
from .._store.backend import Backend
from .._store.events import EventHub
from .._store.local import LocalEngine
from .engine import Engine
from .steps import Call, Steps

T = TypeVar("T")


class Driver:
    """Runs one breaker's operations on its shared and local lanes, and follows the
    fleet's transitions for it (a thread for a sync client, a task for an asyncio one)."""

    def __init__(self, engine: Engine, shared: Backend, hub: EventHub, local: LocalEngine) -> None:
        self.engine = engine
        self.name = engine.name
        self.keys = engine.keys.as_list()
        self.clock = engine.clock
        self.shared = shared
        self.hub = hub
        self.local = local
        self._tasks: set[asyncio.Task[None]] = set()
        if engine.config.batch_interval is not None:
            hub.add_tick(self.flush_if_due)
        hub.add_tick(self.confirm_if_due)

    def flush_if_due(self) -> None:
        """Batched successes reach Redis within their interval (and a poll of the
        events follower, which calls this), also when no call comes to carry them."""
        if self.engine.shared.flush_due():
            self._in_background(self.engine.flushing())

    def confirm_if_due(self) -> None:
        """The channel told of a transition: read the breaker now, on the follower,
        so that no call waits for it (a call meanwhile asks Redis itself)."""
        if self.engine.confirm_pending:
            self._in_background(self.engine.confirming())

    def _in_background(self, steps: Steps[None]) -> None:
        """Run ``steps`` from the follower: on its thread (sync), or as a task in its
        loop (asyncio). Redis failing meanwhile is the next call's to find."""
        if not self.shared.is_async:
            with contextlib.suppress(BackendUnavailableError):
                self.run(steps)
            return
        task = asyncio.get_running_loop().create_task(self._quietly(steps))
        self._tasks.add(task)  # held until done: the loop keeps weak references only
        task.add_done_callback(self._tasks.discard)

    async def _quietly(self, steps: Steps[None]) -> None:
        with contextlib.suppress(BackendUnavailableError):
            await self.arun(steps)

    def release(self) -> None:
        """When the breaker closes: give back what it holds (``releasing``), then let
        go of its hubs, which would otherwise keep its name and ticks for good."""
        try:
            self.run(self.engine.releasing())
        finally:
            self._detach()

    async def arelease(self) -> None:
        """``release``, awaited."""
        try:
            await self.arun(self.engine.releasing())
        finally:
            self._detach()

    def _detach(self) -> None:
        self.hub.remove_ticks(self)
        self.engine.detach()

    def ready(self, *, sync: bool) -> None:
        """Check that the backend serves this calling style, and follow events."""
        if sync and not self.shared.serves_sync:
            raise TypeError(
                f"breaker {self.name!r} uses an asyncio Redis client: "
                "use 'async with', 'await cb.call(async_fn)' and the a-prefixed methods"
            )
        if not sync and not self.shared.serves_async:
            raise TypeError(
                f"breaker {self.name!r} uses a sync Redis client: use 'with' and 'cb.call(fn)'"
            )
        if sync:
            self.hub.start_thread()
        else:
            self.hub.start_task()

    def follow(self, timeout: float | None) -> None:
        """Follow events now; a sync follower is waited for, up to ``timeout``."""
        if self.shared.is_async:
            self.hub.start_task()
            return
        self.hub.start_thread()
        if timeout is not None and self.hub.follows:
            self.hub.subscribed.wait(timeout)

    def run(self, steps: Steps[T]) -> T:
        """Drive ``steps`` with blocking calls."""
        try:
            call = next(steps)
            while True:
                if call.lane == "local":
                    call = steps.send(self._local(call))
                    continue
                self.engine.calling(True)
                try:
                    try:
                        raw = self._shared(call)
                    except BackendUnavailableError as exc:
                        call = steps.throw(exc)
                    else:
                        call = steps.send(raw)  # the reply is taken in before it ends
                finally:
                    self.engine.calling(False)
        except StopIteration as done:
            result: T = done.value
            return result

    async def arun(self, steps: Steps[T]) -> T:
        """Drive ``steps`` with awaits: nothing here blocks the event loop."""
        try:
            call = next(steps)
            while True:
                if call.lane == "local":
                    call = steps.send(self._local(call))
                    continue
                self.engine.calling(True)
                try:
                    try:
                        started = time.perf_counter()
                        raw = await self.shared.arun(
                            self.name, call.script, self.keys, call.args, self.clock.monotonic()
                        )
                        self.engine.tell_backend_call(call.script, time.perf_counter() - started)
                    except BackendUnavailableError as exc:
                        call = steps.throw(exc)
                    else:
                        call = steps.send(raw)
                finally:
                    self.engine.calling(False)
        except StopIteration as done:
            result: T = done.value
            return result

    def _shared(self, call: Call) -> list[Any]:
        started = time.perf_counter()
        raw = self.shared.run(self.name, call.script, self.keys, call.args, self.clock.monotonic())
        self.engine.tell_backend_call(call.script, time.perf_counter() - started)
        return raw

    def _local(self, call: Call) -> list[Any]:
        return self.local.run(call.script, self.keys, call.args)
