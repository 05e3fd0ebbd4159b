"""The public face of the event follower: every transition the fleet publishes, handed
to a function, for a tool that watches all the breakers (``fleetbreaker watch``).

It runs the very follower the breakers use (``_store.events.EventHub``, or on a Cluster
``_store.sharded.ShardedHub``): the same subscription, the same reconnection with backoff,
the same outage log. It lives apart from both because it picks one of them.
"""

from __future__ import annotations

from collections.abc import Callable
from types import TracebackType
from typing import Any

from .._keys import breaker_channel, check_prefix, events_channel
from .._models import TransitionEvent
from .events import EventHub
from .sharded import ShardedHub
from .topology import db_of, is_async_client, topology_of


class EventFollower:
    """Follows the transitions the fleet's breakers publish, on a thread of its own,
    and calls ``on_event`` with each.

    >>> import redis
    >>> with EventFollower(redis.Redis(), on_event=print) as follower:  # doctest: +SKIP
    ...     follower.wait_subscribed(5.0)
    True

    ``client``: a ``redis.Redis`` (a server, or a Sentinel set's master) or a
    ``redis.cluster.RedisCluster``. On a server one channel carries the transitions of
    every breaker of the client's database; on a Cluster each breaker publishes on a
    channel of its own, in its shard, so ``follow(name)`` adds the breakers to hear.
    ``on_subscribed()`` is called each time the follower (re)subscribes;
    ``on_lost(error)`` when a subscription that was up is lost (it subscribes again
    by itself, with backoff). The callbacks run on the follower's thread. Closing it
    (``close``, or ``with``) stops the thread.
    """

    def __init__(
        self,
        client: Any,
        *,
        prefix: str = "breaker",
        on_event: Callable[[TransitionEvent], None],
        on_subscribed: Callable[[], None] | None = None,
        on_lost: Callable[[Exception], None] | None = None,
    ) -> None:
        check_prefix(prefix)
        if is_async_client(client):
            raise TypeError("EventFollower follows with a sync client (redis.Redis)")
        self.prefix = prefix
        self.cluster = topology_of(client) == "cluster"
        self._hub = ShardedHub(client) if self.cluster else None
        hub = self._hub or EventHub(client, events_channel(prefix, db_of(client)))
        #: What it follows: the channel, or on a Cluster, the pattern of every breaker's.
        self.channel = breaker_channel(prefix, "<name>") if self.cluster else hub.channel
        hub.add_event_listener(on_event)
        if on_subscribed is not None:
            hub.add_subscribed_listener(lambda channel: on_subscribed())
        if on_lost is not None:
            hub.add_lost_listener(lambda channel: on_lost(_error_of(hub)))
        self._events = hub
        hub.start_thread()

    def follow(self, *names: str) -> None:
        """Hear the breakers ``names`` too: on a Cluster, subscribe to their channels
        (``wait_subscribed`` then says when it has); elsewhere nothing to do."""
        if self._hub is not None:
            for name in names:
                self._hub.want(breaker_channel(self.prefix, name))

    def wait_subscribed(self, timeout: float) -> bool:
        """Wait until every channel asked for is subscribed, at most ``timeout``
        seconds; whether it is."""
        return self._events.subscribed.wait(timeout)

    def close(self) -> None:
        """Stop following: the thread ends, its connections closed."""
        self._events.stop()

    def __enter__(self) -> EventFollower:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def _error_of(hub: EventHub) -> Exception:
    return hub.last_error if hub.last_error is not None else ConnectionError("lost")
