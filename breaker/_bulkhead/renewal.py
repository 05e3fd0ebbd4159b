"""A bulkhead's renewals: every quarter of ``lease_ttl``, one call renews each lease
held that long (a thread for blocking clients, a task for asyncio ones), until the
bulkhead closes. A lease renewed by nobody expires: a dead process gives its leases
back ``lease_ttl`` after it died."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Awaitable, Callable

logger = logging.getLogger("breaker")

#: The longest ``stop`` waits for a renewal under way (it is one Redis call).
_JOIN_TIMEOUT = 10.0


class Renewer:
    """Runs ``renew`` (blocking) or ``arenew`` (awaited) every ``period`` seconds."""

    def __init__(
        self,
        name: str,
        period: float,
        renew: Callable[[], None],
        arenew: Callable[[], Awaitable[None]],
    ) -> None:
        self._name = name
        self._period = period
        self._renew = renew
        self._arenew = arenew
        self._stopped = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._task: asyncio.Task[None] | None = None

    def start_thread(self) -> None:
        running = self._thread
        if running is not None and running.is_alive():
            return
        with self._lock:
            if self._stopped.is_set() or (self._thread is not None and self._thread.is_alive()):
                return
            self._thread = threading.Thread(
                target=self._loop, name=f"fleetbreaker-bulkhead:{self._name}", daemon=True
            )
            self._thread.start()

    def _loop(self) -> None:
        while not self._stopped.wait(self._period):
            try:
                self._renew()
            except Exception:  # a bug must not end the renewals of every lease
                logger.exception("bulkhead %r: renewal failed", self._name)

    def start_task(self) -> None:
        loop = asyncio.get_running_loop()
        task = self._task
        if self._stopped.is_set() or (
            task is not None and not task.done() and task.get_loop() is loop
        ):
            return
        self._task = loop.create_task(self._aloop(), name=f"bulkhead:{self._name}")

    async def _aloop(self) -> None:
        while not self._stopped.is_set():
            await asyncio.sleep(self._period)
            try:
                await self._arenew()
            except Exception:
                logger.exception("bulkhead %r: renewal failed", self._name)

    def stop(self) -> None:
        """No renewal from now on; a renewal under way ends first (the thread is joined)."""
        self._stopped.set()
        if self._task is not None:
            self._task.cancel()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=_JOIN_TIMEOUT)
