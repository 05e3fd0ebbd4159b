"""``fleetbreaker watch``: the fleet's transitions as they happen, printed one a line,
as the library's ``EventFollower`` hears them."""

from __future__ import annotations

import argparse
import contextlib
import logging
import queue
import signal
import sys
import time
from collections.abc import Callable

from breaker import (
    BreakerOperator,
    EventFollower,
    TransitionEvent,
)

from ..config.redisclient import (
    REDIS_ERRORS,
    close,
    reason,
    topology_of,
)
from .breakers import configured_breakers, redis_client, redis_url_of
from .exits import EXIT_OK, EXIT_UNREACHABLE, CommandError
from .terminal import local_time, shown

#: On a Cluster, how often ``watch`` looks for breakers it does not follow yet.
RESCAN_EVERY = 5.0
#: On a Sentinel set or a Cluster, how long ``watch`` tries to subscribe again after
#: losing a connection: a failover takes a few seconds.
FAILOVER_WAIT = 30.0
_POLL = 0.2


def _interrupted(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _stop_on_signals() -> None:
    """Ctrl-C and SIGTERM end a long-running command cleanly: also when it was started
    with SIGINT ignored, which a process inherits from a background job or nohup (a
    ``watch`` started so never heard Ctrl-C, and its test waited for it in vain)."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _interrupted)


def watch(args: argparse.Namespace) -> int:
    """Print the fleet's transitions as the library's follower hears them. What is
    watch's own: which breakers a Cluster has (a scan every ``RESCAN_EVERY``), what it
    tells on stderr, and how long it waits for Redis to come back."""
    _stop_on_signals()
    # Watch tells a lost Redis itself, on stderr: the follower's outage log would say
    # it twice (and the library's logging is the application's to configure).
    logging.getLogger("breaker").setLevel(logging.ERROR)
    url, setting = redis_url_of(args)
    client = redis_client(url, setting)
    try:
        prefix, configured = configured_breakers(args.command, url)
        standalone = topology_of(client) == "standalone"
        notices: queue.SimpleQueue[Exception | None] = queue.SimpleQueue()
        with EventFollower(
            client,
            prefix=prefix,
            on_event=_print_event,
            on_subscribed=lambda: notices.put(None),
            on_lost=notices.put,
        ) as follower:
            _wait_subscribed(follower)
            if follower.cluster:
                _print_err(
                    f"watching every breaker's channel {follower.channel} on the Redis "
                    f"Cluster, looking for new breakers every {RESCAN_EVERY:g} s (Ctrl-C to stop)"
                )
                with BreakerOperator(client, prefix=prefix) as operator:
                    breakers = lambda: [*configured, *operator.names()]  # noqa: E731
                    _follow_notices(follower, notices, breakers, standalone=False)
            else:
                _print_err(f"watching {follower.channel} (Ctrl-C to stop)")
                _follow_notices(follower, notices, None, standalone=standalone)
    finally:
        close(client)
    return EXIT_OK


def _wait_subscribed(follower: EventFollower) -> None:
    if not follower.wait_subscribed(FAILOVER_WAIT):
        raise CommandError(f"could not subscribe in {FAILOVER_WAIT:.0f} s", EXIT_UNREACHABLE)


def _follow_notices(
    follower: EventFollower,
    notices: queue.SimpleQueue[Exception | None],
    breakers: Callable[[], list[str]] | None,
    *,
    standalone: bool,
) -> None:
    """Until Ctrl-C: tell when the follower loses Redis and subscribes again, give up
    when it stays away (at once on a server: nothing will take over from it), and on a
    Cluster find the breakers to follow."""
    followed: set[str] = set()
    next_scan = 0.0
    lost_at: float | None = None
    lost: Exception | None = None
    while True:
        if breakers is not None and lost_at is None and time.monotonic() >= next_scan:
            with contextlib.suppress(*REDIS_ERRORS):  # a node down: the follower says so
                new = sorted(set(breakers()) - followed)
                if new:
                    follower.follow(*new)
                    followed.update(new)
                    follower.wait_subscribed(RESCAN_EVERY)
                    _print_err(f"following {shown(', '.join(new))}")
            next_scan = time.monotonic() + RESCAN_EVERY
        try:
            notice = notices.get(timeout=_POLL)
        except queue.Empty:
            away = 0.0 if lost_at is None else time.monotonic() - lost_at
            if lost is not None and away > FAILOVER_WAIT:
                raise CommandError(
                    f"lost Redis for {FAILOVER_WAIT:.0f} s: {reason(lost)}", EXIT_UNREACHABLE
                ) from None
            continue
        if notice is None:
            if lost_at is not None:
                _print_err(f"subscribed again after {time.monotonic() - lost_at:.1f} s")
                lost_at = lost = None
        elif standalone:
            raise CommandError(f"lost Redis: {reason(notice)}", EXIT_UNREACHABLE) from None
        elif lost_at is None:
            lost_at, lost = time.monotonic(), notice
            _print_err(f"lost Redis ({shown(reason(notice))}): subscribing again")


def _print_err(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _print_event(event: TransitionEvent) -> None:
    print(
        shown(
            f"{local_time(event.at)} {event.name}: {event.from_state} -> "
            f"{event.to_state} ({event.reason})"
        ),
        flush=True,
    )
