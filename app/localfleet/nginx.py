"""``deploy/nginx.conf``, the very file compose mounts, for a local fleet: only its two
lines marked ``fleet:`` (the addresses) are rewritten."""

from __future__ import annotations

import os

from .services import FleetError

_REPLICA_MARK = "# fleet: one line per replica"
_LISTEN_MARK = "# fleet: the load balancer's address"
_COMPOSE_SERVER = "gateway:8000"
_COMPOSE_LISTEN = "listen 8080;"
# nginx lives in sbin, which a user's PATH often leaves out.
NGINX_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/local/sbin"])


def nginx_conf_for(template: str, lb_port: int, replica_ports: list[int]) -> str:
    """``deploy/nginx.conf`` with compose's addresses swapped for local ones; nothing else
    changes. Refuses a file whose marked lines are missing."""
    lines = template.splitlines(keepends=True)
    if sum(_REPLICA_MARK in line for line in lines) != 1:
        raise FleetError(f"nginx.conf: needs exactly one line marked {_REPLICA_MARK!r}")
    if sum(_LISTEN_MARK in line for line in lines) != 1:
        raise FleetError(f"nginx.conf: needs exactly one line marked {_LISTEN_MARK!r}")
    rewritten = []
    for line in lines:
        if _REPLICA_MARK in line and _COMPOSE_SERVER in line:
            rewritten += [
                line.replace(_COMPOSE_SERVER, f"127.0.0.1:{port}") for port in replica_ports
            ]
        elif _LISTEN_MARK in line and _COMPOSE_LISTEN in line:
            rewritten.append(line.replace(_COMPOSE_LISTEN, f"listen 127.0.0.1:{lb_port};"))
        elif _REPLICA_MARK in line or _LISTEN_MARK in line:
            raise FleetError(f"nginx.conf: the marked line {line.strip()!r} has no address")
        else:
            rewritten.append(line)
    return "".join(rewritten)
