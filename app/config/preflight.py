"""What ``serve`` checks before it prints a banner or starts a worker.

A taken port is refused in one line naming it, before the demo's banner and admin
token: uvicorn would find out only after them, with a traceback-like log line and exit
code 3. An unreachable Redis is said once, with what the gateway does about it, or
refused where the configuration says Redis is required (``[gateway] require_redis``).
"""

from __future__ import annotations

import errno
import socket

from .redisclient import REDIS_ERRORS, close, ping, reason, redacted_url, sync_client
from .settings import GatewayConfig

#: How long ``serve`` waits for its Redis to answer one PING at start.
REDIS_CHECK_TIMEOUT = 2.0


def listen_problem(host: str, port: int, option: str = "--port") -> str | None:
    """Why a server can't listen on ``host:port``, or None when it can; ``option`` is
    the one that picks another port.

    It binds as uvicorn will (``SO_REUSEADDR``), so a port that only holds connections
    in TIME_WAIT is free to both, and one that something listens on is taken for both.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return f"port {port} on {host} is in use: pick another with {option}"
            return f"cannot listen on {host}:{port}: {exc.strerror or exc}"
    return None


def redis_problem(url: str, timeout: float = REDIS_CHECK_TIMEOUT) -> str | None:
    """Why the Redis at ``url`` (a server, a Cluster, a Sentinel set) does not answer a
    PING (every primary's, on a Cluster), or None when it does."""
    try:
        client = sync_client(url, timeout=timeout)
    except REDIS_ERRORS as exc:  # a Cluster client asks its nodes as it is made
        return reason(exc)
    try:
        ping(client)
    except REDIS_ERRORS as exc:
        return reason(exc)
    finally:
        close(client)
    return None


def unreachable_redis(config: GatewayConfig, reason: str) -> str:
    """What the gateway does while its Redis does not answer, in one line: each
    upstream's breaker follows its ``on_backend_error``."""
    assert config.redis_url is not None
    policies = {
        name: upstream.breaker.on_backend_error
        for name, upstream in sorted(config.upstreams.items())
        if upstream.breaker is not None
    }
    fail_open = [name for name, policy in policies.items() if policy == "fail_open"]
    fail_closed = [name for name, policy in policies.items() if policy == "fail_closed"]
    plans = []
    if fail_open:
        which = f": {', '.join(fail_open)}" if fail_closed else ""
        plans.append(f"serving with per-process breakers (fail_open){which}")
    if fail_closed:
        plans.append(f"answering 503 (fail_closed): {', '.join(fail_closed)}")
    plan = (
        "; ".join(plans) + " until it answers" if plans else "serving (no upstream has a breaker)"
    )
    return f"Redis at {redacted_url(config.redis_url)} unreachable ({reason}): {plan}"
