"""The commands that read or control breakers in Redis: ``status``, ``reset``, ``open``
and ``disable``; and the Redis client every Redis command (``watch`` too) talks
through. They need only the library, and act with each breaker's stored settings."""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from breaker import (
    BackendUnavailableError,
    BreakerOperator,
    BreakerSnapshot,
    ConfigurationError,
)

from ..config.redisclient import (
    REDIS_ERRORS,
    close,
    ping,
    reason,
    redacted_url,
    sync_client,
)
from .exits import EXIT_OK, EXIT_UNREACHABLE, CommandError
from .serving import gateway_config
from .terminal import shown

_T = TypeVar("_T")
#: How long a command waits for any one reply of Redis.
REDIS_TIMEOUT = 5.0

# -- Redis commands ---------------------------------------------------------------------


#: Why a Redis command can't see the demo's breakers, and what to do instead.
NO_REDIS = (
    "no Redis to talk to: pass --redis-url or set BREAKER_REDIS_URL (a gateway without "
    "Redis, like the demo, keeps its breakers inside its own process, where this command "
    "can't see them: start it with BREAKER_REDIS_URL=redis://127.0.0.1:6379/1, or ask "
    "its admin API, GET /admin/breakers on its admin listener)"
)


def redis_url_of(args: argparse.Namespace) -> tuple[str, str]:
    """The URL of the Redis to talk to, and the setting it came from."""
    if args.redis_url:
        return args.redis_url, "--redis-url"
    url = os.environ.get("BREAKER_REDIS_URL")
    if not url:
        raise CommandError(NO_REDIS)
    return url, "BREAKER_REDIS_URL"


def redis_client(url: str, setting: str) -> Any:
    """A client of ``url`` (a server, a Cluster or a Sentinel set) that answered a PING:
    a bad URL is exit 2, a Redis that does not answer exit 1, each in one line."""
    try:
        client = sync_client(url, timeout=REDIS_TIMEOUT, setting=setting)
    except ConfigurationError as exc:
        raise CommandError(str(exc)) from None
    except REDIS_ERRORS as exc:
        raise _unreachable(url, exc) from None
    try:
        ping(client)
    except REDIS_ERRORS as exc:
        close(client)
        raise _unreachable(url, exc) from None
    return client


def _unreachable(url: str, exc: BaseException) -> CommandError:
    return CommandError(
        f"cannot reach Redis at {redacted_url(url)}: {reason(exc)}", EXIT_UNREACHABLE
    )


def configured_breakers(command: str, redis_url: str) -> tuple[str, list[str]]:
    """The key prefix, and the names of the configured upstreams with a breaker."""
    environ = {**os.environ, "BREAKER_REDIS_URL": redis_url}
    if not environ.get("BREAKER_CONFIG") and not environ.get("BREAKER_UPSTREAMS"):
        return "breaker", []
    config = gateway_config(command, environ)
    return config.prefix, [name for name, up in config.upstreams.items() if up.breaker]


@contextlib.contextmanager
def _operator(args: argparse.Namespace) -> Iterator[tuple[BreakerOperator, list[str]]]:
    """The operator for ``--redis-url``, and every breaker name it knows of: those in
    Redis (found by SCAN, on every primary of a Cluster) and the configured ones. It
    acts with each breaker's stored settings."""
    url, setting = redis_url_of(args)
    client = redis_client(url, setting)
    try:
        prefix, configured = configured_breakers(args.command, url)
        with _unreachable_guard(lambda: BreakerOperator(client, prefix=prefix)) as operator:
            names = _unreachable_guard(operator.names)
            yield operator, sorted(set(configured) | set(names))
    finally:
        close(client)


def status(args: argparse.Namespace) -> int:
    with _operator(args) as (operator, names):
        snapshots = [_unreachable_guard(functools.partial(operator.snapshot, n)) for n in names]
    if args.json:
        for snapshot in snapshots:
            print(json.dumps(snapshot.as_dict(), sort_keys=True))
        return EXIT_OK
    print(_table(snapshots))
    return EXIT_OK


def _open_left(snapshot: BreakerSnapshot) -> str:
    if snapshot.state != "open":
        return "-"
    if snapshot.retry_after <= 0:
        return "half-open on next call"
    return f"{snapshot.retry_after:.1f}s"


def _table(snapshots: list[BreakerSnapshot]) -> str:
    header = ("NAME", "STATE", "FAILURES", "OPEN FOR", "WINDOW CALLS", "WINDOW FAILED")
    rows = [header] + [
        (
            shown(s.name),
            shown(s.state),
            str(s.failures),
            _open_left(s),
            str(s.window_calls),
            str(s.window_failures),
        )
        for s in snapshots
    ]
    if len(rows) == 1:
        return "no breakers in Redis yet"
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


def control(args: argparse.Namespace) -> int:
    with _operator(args) as (operator, names):
        if args.name not in names:
            known = ", ".join(names) or "none"
            raise CommandError(f"no breaker named '{args.name}' (known: {known})")
        _unreachable_guard(lambda: operator.control(args.name, args.action))
        snapshot = _unreachable_guard(lambda: operator.snapshot(args.name))
    print(shown(f"{snapshot.name}: {snapshot.state}"))
    return EXIT_OK


def _unreachable_guard(operation: Callable[[], _T]) -> _T:
    try:
        return operation()
    except BackendUnavailableError as exc:
        raise CommandError(f"Redis did not answer: {exc.reason}", EXIT_UNREACHABLE) from None
    except REDIS_ERRORS as exc:  # a SCAN, or a Cluster's slot map, asked by the client
        raise CommandError(f"Redis did not answer: {reason(exc)}", EXIT_UNREACHABLE) from None
