"""Ports for the servers a test starts: its own Redis, upstreams, gateways, nginx.

The tests' own, not the product's (``fleetbreaker fleet`` draws its ports in the
app's local fleet): but by the same protocol, on the same ledger, so that a port
handed to a test's server is never handed to a fleet's, in this process or another
(xdist's workers, a fleet a test starts), and the other way round.

The protocol: a port is drawn at random below the kernel's ephemeral range (where the
kernel never picks a connection's own, so none takes it between the check and the
server's bind), checked free, and written to the user's ledger
``<tmp>/fleetbreaker-ports-<uid>`` (JSON: port -> held until, epoch seconds) under an
exclusive ``flock``, where it stays two minutes. A port in the ledger is not handed out.
``test_topology_support`` checks that both sides keep the protocol.
"""

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
#: The ledger every process of this user shares, the product's as well.
LEDGER = Path(tempfile.gettempdir()) / f"fleetbreaker-ports-{os.getuid()}"
_HOLD_SECONDS = 120.0
#: Every port handed out in this process (also where the ledger can't be opened).
_HANDED_OUT: set[int] = set()
_HANDING = threading.Lock()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now and that no process of this
    user was handed in the last two minutes."""
    quiet = _below_the_ephemeral_range()
    with _HANDING, _ledger() as held:
        while True:
            if quiet is not None:
                port = random.choice(quiet)
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
    """``count`` distinct free ports."""
    return [free_port() for _ in range(count)]


def _below_the_ephemeral_range() -> range | None:
    """Ports below ip_local_port_range; None where it can't be read or leaves too few."""
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


@contextlib.contextmanager
def _ledger() -> Iterator[dict[str, float] | None]:
    """The ledger's live entries, written back on exit; None where it can't be opened."""
    try:
        descriptor = os.open(LEDGER, os.O_RDWR | os.O_CREAT, 0o600)
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
