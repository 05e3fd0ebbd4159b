"""Ports for the servers the local fleet starts (gateways, nginx, the demo upstream, its
Redis nodes): drawn below the kernel's ephemeral range, and kept in a per-user ledger
under a file lock, so two processes (two fleets, a fleet and a test) are never handed
the same port before its server binds it. The tests draw theirs here too
(``tests/support/ports.py``), on the same ledger."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import random
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

HOST = "127.0.0.1"

#: Every port ``free_port`` handed out in this process: a port chosen for one service
#: but not bound yet (the fleet's replicas, its admin listeners) is never handed to
#: another (the Cluster it starts next).
_HANDED_OUT: set[int] = set()
_HANDING = threading.Lock()


def _below_the_ephemeral_range() -> range | None:
    """Ports the kernel never picks as a connection's own (ip_local_port_range starts
    above them), so no outgoing connection can take one between our check and the
    server's bind; None where the range can't be read or leaves too little below."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return range(10_000, low) if low - 10_000 >= 4096 else None


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


#: Ports handed out on this machine by any process, for as long as a server may take to
#: bind one: a port checked free but not bound yet is never handed to another process
#: (xdist's workers, two fleets). One ledger per user, under a file lock.
_LEDGER = Path(tempfile.gettempdir()) / f"fleetbreaker-ports-{os.getuid()}"
_HOLD_SECONDS = 120.0


@contextlib.contextmanager
def _ledger() -> Iterator[dict[str, float] | None]:
    """The ledger's live entries (port -> held until, epoch seconds), written back on
    exit; None where it can't be opened (this process alone then avoids repeats)."""
    try:
        descriptor = os.open(_LEDGER, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError:
        yield None
        return
    with os.fdopen(descriptor, "r+") as file:
        fcntl.flock(file, fcntl.LOCK_EX)  # released when the file closes
        try:
            stored = json.loads(file.read() or "{}")
        except ValueError:
            stored = {}
        now = time.time()
        held = {port: until for port, until in stored.items() if until > now}
        yield held
        file.seek(0)
        file.truncate()
        file.write(json.dumps(held))


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now, and that no process
    of this user has been handed in the last two minutes. Drawn at random below the
    kernel's ephemeral range where there is room: a port the kernel picked
    (``bind(0)``) can be taken by any process's next outgoing connection before the
    server we start binds it."""
    quiet = _below_the_ephemeral_range()
    with _HANDING, _ledger() as held:
        while True:
            if quiet is not None:
                port = random.choice(quiet)  # a port, not a secret (B311 is skipped)
            else:
                with socket.socket() as sock:
                    sock.bind((HOST, 0))
                    port = sock.getsockname()[1]
            if port in _HANDED_OUT or (held is not None and str(port) in held):
                continue
            if quiet is not None and not _bindable(port):
                continue
            _HANDED_OUT.add(port)
            if held is not None:
                held[str(port)] = time.time() + _HOLD_SECONDS
            return port


def held_ports() -> dict[str, float]:
    """The ledger's live entries, read under its lock: a read without it can meet
    another process's write between its truncate and its write (an empty file)."""
    with _ledger() as held:
        return dict(held or {})


def free_ports(count: int) -> list[int]:
    """``count`` distinct free ports (``free_port()`` may hand out one port twice)."""
    ports: list[int] = []
    while len(ports) < count:
        port = free_port()
        if port not in ports:
            ports.append(port)
    return ports
