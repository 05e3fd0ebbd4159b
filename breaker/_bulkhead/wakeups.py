"""Waiting callers hear of a lease given back anywhere in the fleet: the ``give``
script publishes the bulkhead's name when someone waits, and each waiting process
follows the channel with the events followers' machinery (reconnection, backoff,
a Cluster's sharded channel), delivering names instead of transitions."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

from .._store.events import EventHub
from .._store.sharded import ShardedHub


def _text(raw: bytes | str) -> str:
    return raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw


class WakeHub(EventHub):
    """Follows a database's slots channel: calls ``wake`` for each message naming
    ``name`` (the channel carries every bulkhead of the database)."""

    def __init__(self, client: Any, channel: str, name: str, wake: Callable[[], None]) -> None:
        super().__init__(client, channel)
        self._name = name
        self._wake_up = wake

    def deliver(self, raw: bytes | str) -> None:
        if _text(raw) == self._name:
            self._wake_up()


class ShardedWakeHub(ShardedHub):
    """``WakeHub`` on a Cluster: the bulkhead's own channel, in its shard."""

    def __init__(self, client: Any, channel: str, name: str, wake: Callable[[], None]) -> None:
        super().__init__(client)
        self._name = name
        self._wake_up = wake
        self.want(channel)

    def deliver(self, raw: bytes | str) -> None:
        if _text(raw) == self._name:
            self._wake_up()


def wake_hub(
    client: Any, channel: str, name: str, wake: Callable[[], None], *, cluster: bool
) -> EventHub:
    """The follower of ``channel`` for one bulkhead: sharded on a Cluster."""
    if cluster:
        return ShardedWakeHub(client, channel, name, wake)
    return WakeHub(client, channel, name, wake)


class Wakeups:
    """Where a bulkhead's waiting callers sleep until a lease comes back, in this
    process (``wake``) or anywhere in the fleet (the channel, once ``follow`` ran).

    ``frees`` counts the wake-ups: a caller reads it before it asks Redis and sleeps
    only if it has not moved since, so a lease given back between the refusal and the
    sleep is never missed. No lock is held while anyone sleeps."""

    def __init__(self, name: str, channel: str, *, cluster: bool, is_async: bool) -> None:
        self._name = name
        self._channel = channel
        self._cluster = cluster
        self._is_async = is_async
        self._freed = threading.Condition()
        self.frees = 0
        self._lock = threading.Lock()
        self._async_waiters: set[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = set()
        self._hub: EventHub | None = None

    def wake(self) -> None:
        with self._freed:
            self.frees += 1
            self._freed.notify_all()
        with self._lock:
            waiters = list(self._async_waiters)
        for loop, future in waiters:
            if not loop.is_closed():
                loop.call_soon_threadsafe(_resolve, future)

    def wait(self, seen: int, longest: float) -> None:
        """Sleep up to ``longest`` seconds, unless a wake-up came after ``seen``."""
        with self._freed:
            if self.frees == seen:
                self._freed.wait(timeout=longest)

    async def await_free(self, seen: int, longest: float) -> None:
        loop = asyncio.get_running_loop()
        entry = (loop, loop.create_future())
        with self._lock:
            self._async_waiters.add(entry)
        try:
            if self.frees == seen:
                await asyncio.wait([entry[1]], timeout=longest)
        finally:
            with self._lock:
                self._async_waiters.discard(entry)

    def follow(self, subscriber: Any) -> None:
        """Follow the channel (from the first wait on); ``subscriber`` None: an
        in-process backend, where every lease given back is this process's own."""
        if subscriber is None:
            return
        with self._lock:
            if self._hub is None:
                self._hub = wake_hub(
                    subscriber, self._channel, self._name, self.wake, cluster=self._cluster
                )
            hub = self._hub
        if self._is_async:
            hub.start_task()
        else:
            hub.start_thread()

    def stop(self) -> None:
        if self._hub is not None:
            self._hub.stop()

    async def astop(self) -> None:
        if self._hub is not None:
            await self._hub.astop()


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
