"""Carries transitions to every breaker object that shares a name, so that a
transition decided anywhere reaches this process's local views (and listeners)
without waiting for a call.

One hub per backend and channel. Events in a script's reply are handed to the other
breaker objects of this process at once, as confirmed. Events of other processes
arrive through the Redis channel as hints, which a breaker confirms with Redis before
it acts on them (``_decisions.engine``). The channel is followed by a daemon thread (sync
client) or a task in the running loop (asyncio client), started by the first breaker
that needs it. It reconnects with backoff; while it is not subscribed, no view is
trusted to decide alone (``following``), so missed events cost round trips, never
wrong decisions. An outage is logged when it begins, at
most once a minute while it lasts, and when it ends (``_outage``). In-process backends
have no channel to follow: their hub only relays.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

from .._models import TransitionEvent
from .._outage import OutageLog
from .topology import REDIS_ERRORS, resolve

logger = logging.getLogger("breaker")

#: Called with an event, and whether it is confirmed (from a reply) or a hint (from
#: the channel).
Receiver = Callable[[TransitionEvent, bool], None]
# How often a follower looks up from the channel to see whether it must stop.
_POLL = 0.1
_BACKOFF_FIRST = 0.05
_BACKOFF_MAX = 1.0


class EventHub:
    """Delivers each event of ``channel`` to the receivers registered under its name."""

    def __init__(self, client: Any, channel: str) -> None:
        # None: nothing to follow (the embedded backend); may be a ``Deferred``.
        self._client = client
        self.channel = channel
        self._receivers: dict[str, list[weakref.WeakMethod[Receiver]]] = {}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        # The sync follower's connection while it reads: ``stop`` shuts its socket down
        # so that the follower wakes at once, not at its next poll.
        self._reading: Any = None
        self._task: asyncio.Task[None] | None = None
        self._stopped = threading.Event()
        self.subscribed = threading.Event()
        #: How many times the follower subscribed: more than once, it was away.
        self.subscriptions = 0
        self._subscribed_listeners: list[Callable[[str], None]] = []
        self._lost_listeners: list[Callable[[str], None]] = []
        self._event_listeners: list[Callable[[TransitionEvent], None]] = []
        #: The error the follower last failed with (None: it never failed).
        self.last_error: Exception | None = None
        self._following = False  # subscribed, and not lost since
        self._ticks: list[weakref.WeakMethod[Callable[[], None]]] = []
        # A dead Redis fails every reconnection: log its outage, not each attempt.
        self._outage = OutageLog(f"events channel {channel}")

    @property
    def follows(self) -> bool:
        """Whether there is a channel to follow (not on an in-process backend)."""
        return self._client is not None

    @property
    def client(self) -> Any:
        """The client the follower subscribes with (made now if it was deferred)."""
        return resolve(self._client)

    @property
    def following(self) -> bool:
        """Whether every transition of the fleet reaches this hub now: subscribed, and
        not lost since (or nothing to follow). Until then, a view may miss one."""
        return self._client is None or self.subscribed.is_set()

    def add_subscribed_listener(self, listener: Callable[[str], None]) -> None:
        """Call ``listener(channel)`` each time the follower (re)subscribes; kept once."""
        with self._lock:
            if listener not in self._subscribed_listeners:
                self._subscribed_listeners.append(listener)

    def add_lost_listener(self, listener: Callable[[str], None]) -> None:
        """Call ``listener(channel)`` when a subscription that was up is lost (once per
        loss, not on each failed attempt to subscribe again)."""
        with self._lock:
            if listener not in self._lost_listeners:
                self._lost_listeners.append(listener)

    def add_event_listener(self, listener: Callable[[TransitionEvent], None]) -> None:
        """Call ``listener(event)`` with every event heard on the channel, whatever its
        breaker: a tool that watches them all (``EventFollower``)."""
        with self._lock:
            self._event_listeners.append(listener)

    def _on_subscribed(self) -> None:
        self._following = True
        self.subscriptions += 1
        self.subscribed.set()
        recovered = self._outage.recovered(time.monotonic())
        if recovered is not None:
            logger.warning(recovered)
        self._tell(self._subscribed_listeners)

    def _tell(self, listeners: list[Callable[[str], None]]) -> None:
        """Call each of ``listeners`` with the channel; one that fails is logged."""
        for listener in list(listeners):
            try:
                listener(self.channel)
            except Exception:
                logger.exception("events listener %r failed", listener)

    def add_tick(self, tick: Callable[[], None]) -> None:
        """Call ``tick`` (a bound method, held weakly) after each poll of the follower
        (at most ``_POLL`` apart): for work due on time, such as batched counts."""
        with self._lock:
            self._ticks.append(weakref.WeakMethod(tick))

    def remove_ticks(self, owner: object) -> None:
        """Stop calling the ticks of ``owner`` (a closed breaker's driver)."""
        with self._lock:
            self._ticks = [
                ref
                for ref in self._ticks
                if (tick := ref()) is not None and getattr(tick, "__self__", None) is not owner
            ]

    def _tick(self) -> None:
        with self._lock:
            ticks = [tick for ref in self._ticks if (tick := ref()) is not None]
        for tick in ticks:
            try:
                tick()
            except Exception:
                logger.exception("events follower tick %r failed", tick)

    def register(self, name: str, receiver: Receiver) -> None:
        """Call ``receiver`` (a bound method, held weakly) for every event of ``name``."""
        with self._lock:
            alive = [ref for ref in self._receivers.get(name, []) if ref() is not None]
            alive.append(weakref.WeakMethod(receiver))
            self._receivers[name] = alive

    def unregister(self, name: str, owner: object) -> None:
        """Stop calling the receivers of ``owner`` (a closed breaker's engine) for
        ``name``; a name left with none is forgotten, so names come and go freely."""
        with self._lock:
            alive = [
                ref
                for ref in self._receivers.get(name, [])
                if (receiver := ref()) is not None
                and getattr(receiver, "__self__", None) is not owner
            ]
            if alive:
                self._receivers[name] = alive
            else:
                self._receivers.pop(name, None)

    def relay(self, events: tuple[TransitionEvent, ...], *, confirmed: bool = True) -> None:
        """Hand events to every receiver of their breaker in this process.
        ``confirmed``: they came in a script's reply, so Redis holds what they say (a
        message on the channel is a hint: anyone who may PUBLISH can write one)."""
        for event in events:
            with self._lock:
                refs = list(self._receivers.get(event.name, ()))
            for ref in refs:
                receiver = ref()
                if receiver is not None:
                    receiver(event, confirmed)

    def deliver(self, raw: bytes | str) -> None:
        """A message from the channel: a hint of a transition, to be confirmed. The
        ticks run at once (the read that confirms it among them), not after the
        follower's next poll of every connection it holds."""
        event = TransitionEvent.from_json(raw)
        if event is None:
            logger.warning("ignoring a malformed message on %s", self.channel)
            return
        self.relay((event,), confirmed=False)
        with self._lock:
            listeners = list(self._event_listeners)
        for listener in listeners:
            try:
                listener(event)
            except Exception:
                logger.exception("events listener %r failed", listener)
        self._tick()

    def _lost(self, exc: Exception) -> None:
        # The listeners first: whoever sees ``subscribed`` clear sees them done.
        self.last_error = exc
        was_following, self._following = self._following, False
        if was_following:
            self._tell(self._lost_listeners)
        self.subscribed.clear()
        line = self._outage.failed(str(exc), time.monotonic())
        if line is not None:
            logger.warning(line)

    # -- sync: a daemon thread -----------------------------------------------------

    def start_thread(self) -> None:
        if self._client is None:
            return
        running = self._thread
        if running is not None and running.is_alive():
            return  # every sync call asks: once running, answer without the lock
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
            subscriptions = self.subscriptions
            try:
                self._session_sync()
            except REDIS_ERRORS as exc:
                if self._stopped.is_set():
                    return  # woken by stop: nothing was lost
                if self.subscriptions > subscriptions:
                    backoff = _BACKOFF_FIRST  # it was up: the outage starts now
                self._lost(exc)
                self._stopped.wait(backoff)
                backoff = min(backoff * 2, _BACKOFF_MAX)

    def _session_sync(self) -> None:
        """Subscribe, then deliver until stopped; raises when the connection fails."""
        pubsub = self.client.pubsub(ignore_subscribe_messages=True)
        try:
            pubsub.subscribe(self.channel)
            self._reading = pubsub.connection
            self._on_subscribed()
            while not self._stopped.is_set():
                message = pubsub.get_message(timeout=_POLL)
                if message is not None and message["type"] == "message":
                    self.deliver(message["data"])
                self._tick()
        finally:
            self._reading = None
            pubsub.close()

    def _wake(self) -> None:
        """Wake the sync follower from its read: shut its socket down (the follower,
        which owns the connection, closes it). Without a socket, it wakes at its poll."""
        sock = getattr(self._reading, "_sock", None)
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    # -- async: a task in the running loop ----------------------------------------

    def start_task(self) -> None:
        if self._client is None:
            return
        loop = asyncio.get_running_loop()
        task = self._task
        if task is not None and not task.done() and task.get_loop() is loop:
            return
        self._task = loop.create_task(self._follow_async(), name=f"events:{self.channel}")

    async def _follow_async(self) -> None:
        backoff = _BACKOFF_FIRST
        while not self._stopped.is_set():
            subscriptions = self.subscriptions
            try:
                await self._session_async()
            except REDIS_ERRORS as exc:
                if self.subscriptions > subscriptions:
                    backoff = _BACKOFF_FIRST
                self._lost(exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, _BACKOFF_MAX)

    async def _session_async(self) -> None:
        pubsub = self.client.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.subscribe(self.channel)
            self._on_subscribed()
            while not self._stopped.is_set():
                message = await pubsub.get_message(timeout=_POLL)
                if message is not None and message["type"] == "message":
                    self.deliver(message["data"])
                self._tick()
        finally:
            await pubsub.aclose()

    def stop(self) -> None:
        """Stop following: the thread ends within a poll (and is waited for); a task
        is cancelled (``astop`` also waits for it)."""
        self._stopped.set()
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.get_loop().call_soon_threadsafe(task.cancel)
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            self._wake()
            thread.join()

    async def astop(self) -> None:
        """``stop``, waiting for the task to end when it runs in this loop."""
        task = self._task
        self.stop()
        if task is not None and task.get_loop() is asyncio.get_running_loop():
            with contextlib.suppress(asyncio.CancelledError):
                await task
