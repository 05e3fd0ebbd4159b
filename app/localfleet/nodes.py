"""Real Redis topologies on this machine: a Redis Cluster (``LocalCluster``, 3 primaries
and a replica each) and a Sentinel set (``SentinelSet``, a master, two replicas and three
sentinels), started, waited for, broken and stopped. ``fleetbreaker fleet --redis
cluster|sentinel`` runs one for its gateways; the tests start them too.

Every process is a child of this one (``subprocess.Popen``, never ``--daemonize``) on
127.0.0.1, on ports from ``free_port()``, with a directory of its own and its log in
``redis.log`` there; ``stop()`` kills each by its pid and reaps it. With ``guarded``
(the fleet), each runs in a session of its own, so a Ctrl-C in the terminal reaches
only its owner, and under the orphan guard, so it dies with its owner even when that
is killed outright. Every wait is bounded and fails with a ``TopologyError`` that names
what it waited for, the last thing it saw, and the tail of every node's log.

The replicas stream their first sync at once (``repl-diskless-sync-delay 0``): Redis
7's default waits 5 s for more replicas, and a replica that never synced refuses to
take over from a dead primary.
"""

from __future__ import annotations

import abc
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Self

import redis
from redis.backoff import NoBackoff
from redis.crc import key_slot
from redis.retry import Retry

from .ports import HOST

_START_TIMEOUT = 10.0  # for a process to answer PING
SETTLE_TIMEOUT = 30.0  # for a topology to agree with itself
FAILOVER_TIMEOUT = 60.0  # for a new primary or master after a kill
_IO_TIMEOUT = 2.0  # of the connections this module makes to watch the nodes
_POLL = 0.05
_LOG_LINES = 12

#: The timeouts of ``Node.client()``: a dead local process refuses at once, so these
#: only bound a hung one.
CLIENT_TIMEOUTS: dict[str, Any] = {"socket_timeout": 2.0, "socket_connect_timeout": 1.0}


def redis_server_command(port: int, data: Path) -> list[str]:
    """A ``redis-server`` on 127.0.0.1:``port`` that persists nothing."""
    return [
        "redis-server",
        "--port",
        str(port),
        "--bind",
        HOST,
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        str(data),
    ]


def orphan_guard() -> list[str]:
    """A prefix that has the kernel send SIGTERM to the child when its parent dies
    (util-linux's ``setpriv``; nothing where it is missing)."""
    setpriv = shutil.which("setpriv")
    return [setpriv, "--pdeathsig", "TERM", "--"] if setpriv else []


class TopologyError(RuntimeError):
    """A topology did not start, or did not reach the state a test waited for."""


class Node:
    """One ``redis-server`` process (or sentinel) of a topology.

    ``name`` stays what it was at the start (``node-0``, ``redis-1``, ``sentinel-2``):
    roles change with failovers, so ask the topology which node is primary now.
    """

    def __init__(
        self, name: str, port: int, directory: Path, command: list[str], *, guarded: bool = False
    ) -> None:
        self.name = name
        self.port = port
        self.directory = directory
        self.log = directory / "redis.log"
        self.command = [*command, "--logfile", str(self.log)]
        self.guarded = guarded
        self.process: subprocess.Popen[bytes] | None = None
        self.killed_at: float | None = None  # time.monotonic() of the last kill()
        directory.mkdir(parents=True, exist_ok=True)

    def __repr__(self) -> str:
        pid = self.process.pid if self.process is not None else None
        return f"{self.name} ({HOST}:{self.port}, pid {pid})"

    @property
    def address(self) -> tuple[str, int]:
        return (HOST, self.port)

    @property
    def pid(self) -> int:
        if self.process is None:
            raise TopologyError(f"{self.name} was never started")
        return self.process.pid

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self) -> None:
        """Start the process (again, after a kill: same port, same directory)."""
        # Redis writes to the log itself; what it says before it opens the log (a bad
        # argument, a port in use) goes to the same file.
        with self.log.open("ab") as console:
            self.process = subprocess.Popen(  # noqa: S603 - our programs, our ports  # nosec B603
                [*(orphan_guard() if self.guarded else []), *self.command],
                stdin=subprocess.DEVNULL,
                stdout=console,
                stderr=subprocess.STDOUT,
                cwd=self.directory,
                start_new_session=self.guarded,
            )
        self.killed_at = None

    def wait_up(self) -> None:
        def missing() -> str:
            if not self.alive:
                raise TopologyError(f"{self} exited at start\n{self.tail()}")
            ask(self, "PING")
            return ""

        wait_for(f"{self} to answer PING", missing, [self], _START_TIMEOUT)

    def kill(self) -> None:
        """SIGKILL, like a crash: no goodbye to clients or peers. Reaped at once."""
        if self.process is None or not self.alive:
            raise TopologyError(f"{self} is not running")
        self.process.send_signal(signal.SIGKILL)
        self.killed_at = time.monotonic()
        self.process.wait(timeout=_START_TIMEOUT)

    def stop(self) -> None:
        """Kill and reap the process if it runs; its data is in memory only anyway."""
        if self.process is not None and self.alive:
            self.process.send_signal(signal.SIGKILL)
        if self.process is not None:
            self.process.wait(timeout=_START_TIMEOUT)

    def client(self, **options: Any) -> redis.Redis:
        """A plain client on this node alone; the caller closes it."""
        return redis.Redis(host=HOST, port=self.port, **{**CLIENT_TIMEOUTS, **options})

    def tail(self, lines: int = _LOG_LINES) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except FileNotFoundError:
            text = ""
        last = "\n".join(text.splitlines()[-lines:])
        state = "running" if self.alive else "not running"
        return f"--- {self}, {state}, {self.log}:\n{last}"


def ask(node: Node, *command: str | int) -> Any:
    """One command on a connection of its own, with no retry, replies as text."""
    client = redis.Redis(
        host=HOST,
        port=node.port,
        socket_timeout=_IO_TIMEOUT,
        socket_connect_timeout=_IO_TIMEOUT,
        retry=Retry(NoBackoff(), 0),
        decode_responses=True,
    )
    try:
        return client.execute_command(*command)  # type: ignore[no-untyped-call]
    finally:
        client.close()


def wait_for(what: str, missing: Callable[[], str], nodes: Sequence[Node], timeout: float) -> None:
    """Poll ``missing()`` (what is still missing, ``""`` once there) until ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            reason = missing()
        except (redis.RedisError, OSError) as exc:
            reason = f"{type(exc).__name__}: {exc}"
        if not reason:
            return
        if time.monotonic() > deadline:
            tails = "\n".join(node.tail() for node in nodes)
            raise TopologyError(f"waited {timeout:g} s for {what}; last: {reason}\n{tails}")
        time.sleep(_POLL)


def require_programs(*names: str) -> None:
    missing = [name for name in names if shutil.which(name) is None]
    if missing:
        raise TopologyError(f"{', '.join(missing)} not installed (apt-get install -y redis-server)")


def slot_of(key_or_slot: str | bytes | int) -> int:
    if isinstance(key_or_slot, int):
        return key_or_slot
    key = key_or_slot.encode() if isinstance(key_or_slot, str) else key_or_slot
    return key_slot(key)


def key_in_slot(slot: int) -> str:
    """A key that hashes to ``slot``, for probing who serves it."""
    for number in range(1_000_000):
        key = f"topology-probe:{number}"
        if key_slot(key.encode()) == slot:
            return key
    raise TopologyError(f"no probe key found for slot {slot}")


def accepts_writes(node: Node, key: str) -> str:
    """``""`` if ``node`` takes a write of ``key``, else why not.

    The write is a DEL of a key that does not exist: a replica refuses it (READONLY,
    or MOVED in a cluster), and it leaves nothing behind in a test's data.
    """
    try:
        ask(node, "DEL", key)
    except redis.RedisError as exc:
        return f"{node} refuses a write: {exc}"
    return ""


class Topology(abc.ABC):
    """What a cluster and a sentinel set share: processes to start, kill and reap."""

    nodes: list[Node]

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @abc.abstractmethod
    def start(self) -> None:
        """Start every process and return once the topology is ready."""

    def stop(self) -> None:
        """Kill and reap every process; idempotent."""
        for node in self.nodes:
            node.stop()

    @property
    def pids(self) -> list[int]:
        """The pids of every process started, for a test to see them gone."""
        return [node.pid for node in self.nodes if node.process is not None]

    def live(self) -> list[Node]:
        return [node for node in self.nodes if node.alive]

    def node_at(self, port: int) -> Node:
        for node in self.nodes:
            if node.port == port:
                return node
        raise TopologyError(f"no node of this topology listens on port {port}")


def unlinked(replica: Node) -> str:
    """``""`` if ``replica`` is in sync with its master, else what it says."""
    link = ask(replica, "INFO", "replication").get("master_link_status")
    return "" if link == "up" else f"{replica} has master_link_status:{link}"
