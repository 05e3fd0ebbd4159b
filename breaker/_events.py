"""Follows the events channel, so that a transition decided anywhere in the fleet
reaches this process's local views (and its listeners) without waiting for a call.

One subscriber per backend and channel, started by the first breaker that needs it:
a daemon thread for a sync client, a task in the running loop for an asyncio client.
It reconnects with backoff; events missed while disconnected only leave a local view
stale for as long as its trust lasts (see ``_core.LocalView``).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import weakref
from collections.abc import Callable
from typing import Any

import redis

from ._protocol import TransitionEvent

logger = logging.getLogger("breaker")

Receiver = Callable[[TransitionEvent], None]
_POLL = 0.5
_BACKOFF_FIRST = 0.05
_BACKOFF_MAX = 5.0


class EventSubscriber:
    """Delivers each event on ``channel`` to the receivers registered under its name."""

    def __init__(self, client: Any, channel: str) -> None:
        self.client = client
        self.channel = channel
        self._receivers: dict[str, weakref.WeakSet[Any]] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopped = threading.Event()
        self.subscribed = threading.Event()

    def register(self, name: str, receiver: Any) -> None:
        """``receiver.receive_event(event)`` is called for every event of ``name``."""
        with self._lock:
            self._receivers.setdefault(name, weakref.WeakSet()).add(receiver)

    def deliver(self, raw: bytes | str) -> None:
        event = TransitionEvent.from_json(raw)
        if event is None:
            logger.warning("ignoring a malformed message on %s", self.channel)
            return
        with self._lock:
            receivers = list(self._receivers.get(event.name, ()))
        for receiver in receivers:
            receiver.receive_event(event)

    # -- sync: a daemon thread -----------------------------------------------------

    def start_thread(self) -> None:
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return
            self._thread = threading.Thread(
                target=self._follow_sync, name=f"fleetbreaker-events:{self.channel}", daemon=True
            )
            self._thread.start()

    def _follow_sync(self) -> None:
        backoff = _BACKOFF_FIRST
        while not self._stopped.is_set():
            pubsub = self.client.pubsub(ignore_subscribe_messages=True)
            try:
                pubsub.subscribe(self.channel)
                self.subscribed.set()
                backoff = _BACKOFF_FIRST
                while not self._stopped.is_set():
                    message = pubsub.get_message(timeout=_POLL)
                    if message is not None and message["type"] == "message":
                        self.deliver(message["data"])
            except (redis.RedisError, OSError) as exc:
                self.subscribed.clear()
                logger.warning("events channel %s lost: %s", self.channel, exc)
                self._stopped.wait(backoff)
                backoff = min(backoff * 2, _BACKOFF_MAX)
            finally:
                pubsub.close()

    # -- async: a task in the running loop ----------------------------------------

    def start_task(self) -> None:
        loop = asyncio.get_running_loop()
        task = self._task
        if task is not None and not task.done() and task.get_loop() is loop:
            return
        self._task = loop.create_task(self._follow_async(), name=f"events:{self.channel}")

    async def _follow_async(self) -> None:
        backoff = _BACKOFF_FIRST
        while not self._stopped.is_set():
            pubsub = self.client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.channel)
                self.subscribed.set()
                backoff = _BACKOFF_FIRST
                while not self._stopped.is_set():
                    message = await pubsub.get_message(timeout=_POLL)
                    if message is not None and message["type"] == "message":
                        self.deliver(message["data"])
            except (redis.RedisError, OSError) as exc:
                self.subscribed.clear()
                logger.warning("events channel %s lost: %s", self.channel, exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, _BACKOFF_MAX)
            finally:
                await pubsub.aclose()

    def stop(self) -> None:
        self._stopped.set()
        if self._task is not None and not self._task.done():
            self._task.cancel()
