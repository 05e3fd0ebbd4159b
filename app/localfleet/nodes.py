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
import contextlib
import fcntl
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self, TypeVar

import redis
from redis.backoff import NoBackoff
from redis.crc import key_slot
from redis.retry import Retry

_START_TIMEOUT = 10.0  # for a process to answer PING
_CREATE_TIMEOUT = 30.0  # for redis-cli --cluster create, which polls once a second
SETTLE_TIMEOUT = 30.0  # for a topology to agree with itself
_FAILOVER_TIMEOUT = 60.0  # for a new primary or master after a kill
_IO_TIMEOUT = 2.0  # of the connections this module makes to watch the nodes
_POLL = 0.05
_LOG_LINES = 12

#: The timeouts of ``Node.client()``: a dead local process refuses at once, so these
#: only bound a hung one.
CLIENT_TIMEOUTS: dict[str, Any] = {"socket_timeout": 2.0, "socket_connect_timeout": 1.0}

HOST = "127.0.0.1"

_T = TypeVar("_T")


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


def free_ports(count: int) -> list[int]:
    """``count`` distinct free ports (``free_port()`` may hand out one port twice)."""
    ports: list[int] = []
    while len(ports) < count:
        port = free_port()
        if port not in ports:
            ports.append(port)
    return ports


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


class _Topology(abc.ABC):
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


@dataclass(frozen=True)
class ClusterEntry:
    """One line of CLUSTER NODES, reduced to what every node must agree on."""

    port: int
    primary: bool
    replicates: int | None  # the port of its primary
    slots: tuple[tuple[int, int], ...]
    failed: bool

    def serves(self, slot: int) -> bool:
        return any(first <= slot <= last for first, last in self.slots)


ClusterView = frozenset[ClusterEntry]


def _parse_cluster_nodes(text: str) -> ClusterView:
    fields = [line.split() for line in text.splitlines() if line.strip()]
    port_of = {f[0]: int(f[1].split("@")[0].rsplit(":", 1)[1]) for f in fields}
    entries = []
    for f in fields:
        flags = f[2].split(",")
        slots = []
        for spec in f[8:]:
            if spec.startswith("["):  # a slot being migrated: never here
                continue
            first, _, last = spec.partition("-")
            slots.append((int(first), int(last or first)))
        entries.append(
            ClusterEntry(
                port=port_of[f[0]],
                primary="master" in flags,
                replicates=port_of.get(f[3]),
                slots=tuple(sorted(slots)),
                failed="fail" in flags,
            )
        )
    return frozenset(entries)


class LocalCluster(_Topology):
    """A Redis Cluster on 127.0.0.1: ``primaries`` primaries, one replica each.

    Made by ``redis-cli --cluster create``; ``start()`` returns once every node says
    ``cluster_state:ok``, every node sees the same slot map and roles, and every
    replica is in sync.

        with LocalCluster(tmp_path) as cluster:
            old = cluster.primary_for("{payments}")
            cluster.kill(old)
            seconds = cluster.wait_new_primary("{payments}", old)

    ``node_timeout_ms`` is ``cluster-node-timeout``: a dead primary is replaced about
    a node timeout and a second after its death (2-3 s at 1000 ms, 3-4 s at 2000).
    """

    def __init__(
        self,
        workdir: Path,
        *,
        primaries: int = 3,
        node_timeout_ms: int = 2000,
        guarded: bool = False,
    ) -> None:
        count = 2 * primaries
        ports = free_ports(2 * count)  # each node's port, and its cluster bus port
        self.nodes = []
        for index in range(count):
            port, bus = ports[index], ports[count + index]
            directory = workdir / f"node-{index}"
            command = [
                *redis_server_command(port, directory),
                "--cluster-enabled",
                "yes",
                # Explicit, because port + 10000 (the default) may be taken, or > 65535.
                "--cluster-port",
                str(bus),
                "--cluster-config-file",
                f"nodes-{port}.conf",
                "--cluster-node-timeout",
                str(node_timeout_ms),
                "--repl-diskless-sync-delay",
                "0",
            ]
            self.nodes.append(Node(f"node-{index}", port, directory, command, guarded=guarded))

    @property
    def startup_nodes(self) -> list[tuple[str, int]]:
        """(host, port) of every node, primaries and replicas."""
        return [node.address for node in self.nodes]

    @property
    def urls(self) -> list[str]:
        return [f"redis://{HOST}:{node.port}" for node in self.nodes]

    @property
    def url(self) -> str:
        """``redis+cluster://127.0.0.1:p1,127.0.0.1:p2,...``, every node."""
        return "redis+cluster://" + ",".join(f"{HOST}:{node.port}" for node in self.nodes)

    def start(self) -> None:
        require_programs("redis-server", "redis-cli")
        for node in self.nodes:
            node.start()
        for node in self.nodes:
            node.wait_up()
        command = [
            "redis-cli",
            "--cluster",
            "create",
            *(f"{HOST}:{node.port}" for node in self.nodes),
            "--cluster-replicas",
            "1",
            "--cluster-yes",  # else it asks to accept the layout, and would read stdin
        ]
        try:
            created = subprocess.run(  # noqa: S603 - redis-cli on our nodes  # nosec B603
                command,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=_CREATE_TIMEOUT,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise TopologyError(
                f"redis-cli --cluster create did not finish in {_CREATE_TIMEOUT:g} s\n"
                + self._tails()
            ) from exc
        if created.returncode != 0:
            raise TopologyError(
                f"redis-cli --cluster create exited {created.returncode}:\n"
                f"{created.stdout}{created.stderr}\n{self._tails()}"
            )
        self.wait_ok()

    def primary_for(self, key_or_slot: str | bytes | int) -> Node:
        """The node serving the slot of a key (or a slot number), as every node sees it."""
        slot = slot_of(key_or_slot)

        def owner(view: ClusterView) -> int | None:
            return next((e.port for e in view if e.primary and e.serves(slot)), None)

        port = self._agreed(f"who serves slot {slot}", owner)
        if port is None:
            raise TopologyError(f"no node serves slot {slot}")
        return self.node_at(port)

    def kill(self, node: Node) -> None:
        """SIGKILL ``node``; ``node.killed_at`` is when, for ``wait_new_primary``."""
        node.kill()

    def wait_new_primary(
        self, key_or_slot: str | bytes | int, old: Node, timeout: float = _FAILOVER_TIMEOUT
    ) -> float:
        """Wait until a node other than the killed ``old`` takes writes for the slot;
        return the seconds from the kill to that write. Then waits (not counted) until
        the whole cluster agrees, as ``wait_ok()``."""
        if old.killed_at is None:
            raise TopologyError(f"{old} was not killed")
        killed_at = old.killed_at
        slot = slot_of(key_or_slot)
        probe = key_in_slot(slot)

        def missing() -> str:
            refusals = [accepts_writes(node, probe) for node in self.live() if node is not old]
            return "" if "" in refusals else "; ".join(refusals)

        wait_for(f"a new primary for slot {slot} after {old}", missing, self.nodes, timeout)
        seconds = time.monotonic() - killed_at
        self.wait_ok(timeout)
        return seconds

    def wait_ok(self, timeout: float = SETTLE_TIMEOUT) -> None:
        """Wait until every live node says ``cluster_state:ok`` and sees the same
        nodes, roles and slots; every slot is served by a live primary, every dead node
        is marked failed, and every live replica is in sync with its primary."""
        wait_for("the cluster to settle", self._unsettled, self.nodes, timeout)

    def _view(self, node: Node) -> ClusterView:
        return _parse_cluster_nodes(ask(node, "CLUSTER", "NODES"))

    def _agreed(self, what: str, pick: Callable[[ClusterView], _T]) -> _T:
        seen = {node: pick(self._view(node)) for node in self.live()}
        if len(set(seen.values())) != 1:
            raise TopologyError(f"the nodes disagree on {what} (call wait_ok() first): {seen}")
        return next(iter(seen.values()))

    def _unsettled(self) -> str:
        live = self.live()
        if not live:
            return "no node is running"
        for node in live:
            state = _cluster_state(ask(node, "CLUSTER", "INFO"))
            if state != "ok":
                return f"{node} says cluster_state:{state}"
        views = {node: self._view(node) for node in live}
        if len(set(views.values())) != 1:
            return "the nodes disagree: " + "; ".join(
                f"{node} sees {_describe(view)}" for node, view in views.items()
            )
        view = views[live[0]]
        if {e.port for e in view} != {node.port for node in self.nodes}:
            return f"the nodes know {_describe(view)}"
        for entry in view:
            node = self.node_at(entry.port)
            if not node.alive and not entry.failed:
                return f"{node} is dead but not marked failed yet"
            if entry.primary and entry.slots and not node.alive:
                return f"{node} is dead and still serves slots"
            if node.alive and entry.replicates is not None and (missing := _unlinked(node)):
                return missing
        return ""

    def _tails(self) -> str:
        return "\n".join(node.tail() for node in self.nodes)


def _cluster_state(cluster_info: str) -> str:
    for line in cluster_info.splitlines():
        name, _, value = line.partition(":")
        if name == "cluster_state":
            return value.strip()
    return ""


def _unlinked(replica: Node) -> str:
    """``""`` if ``replica`` is in sync with its master, else what it says."""
    link = ask(replica, "INFO", "replication").get("master_link_status")
    return "" if link == "up" else f"{replica} has master_link_status:{link}"


def _describe(view: Iterable[ClusterEntry]) -> str:
    parts = []
    for e in sorted(view, key=lambda e: e.port):
        role = "primary" if e.primary else f"replica of {e.replicates}"
        slots = ",".join(f"{a}-{b}" for a, b in e.slots)
        parts.append(f"{e.port} {role}{' [' + slots + ']' if slots else ''}{' FAIL' * e.failed}")
    return ", ".join(parts)


class SentinelSet(_Topology):
    """A master, two replicas and three sentinels on 127.0.0.1 (quorum 2).

    ``start()`` returns once the replicas are in sync and every sentinel knows the
    master, both replicas and the two other sentinels: then any two can fail over.

        with SentinelSet(tmp_path) as sentinels:
            old = sentinels.kill_master()
            seconds = sentinels.wait_new_master(old)

    ``down_after_ms`` is each sentinel's ``down-after-milliseconds``. After a failed
    election the sentinels wait twice ``failover_timeout_ms`` before the next one, and
    the default (3 minutes) would outlast any test: hence 5 s here.
    """

    def __init__(
        self,
        workdir: Path,
        *,
        name: str = "fleet",
        down_after_ms: int = 1000,
        failover_timeout_ms: int = 5000,
        guarded: bool = False,
    ) -> None:
        self.name = name
        ports = free_ports(6)
        self.servers: list[Node] = []
        for index, port in enumerate(ports[:3]):
            directory = workdir / f"redis-{index}"
            command = [*redis_server_command(port, directory), "--repl-diskless-sync-delay", "0"]
            if index > 0:
                command += ["--replicaof", HOST, str(ports[0])]
            self.servers.append(Node(f"redis-{index}", port, directory, command, guarded=guarded))
        self.sentinel_nodes: list[Node] = []
        for index, port in enumerate(ports[3:]):
            directory = workdir / f"sentinel-{index}"
            conf = directory / "sentinel.conf"
            command = ["redis-server", str(conf), "--sentinel"]
            self.sentinel_nodes.append(
                Node(f"sentinel-{index}", port, directory, command, guarded=guarded)
            )
            # Written once, then the sentinel's own: it rewrites the file as it learns.
            conf.write_text(
                f"port {port}\n"
                f"bind {HOST}\n"
                f"dir {directory}\n"
                f"sentinel monitor {name} {HOST} {ports[0]} 2\n"
                f"sentinel down-after-milliseconds {name} {down_after_ms}\n"
                f"sentinel failover-timeout {name} {failover_timeout_ms}\n"
                f"sentinel parallel-syncs {name} 1\n"
            )
        self.nodes = [*self.servers, *self.sentinel_nodes]

    @property
    def sentinels(self) -> list[tuple[str, int]]:
        return [node.address for node in self.sentinel_nodes]

    @property
    def url(self) -> str:
        """``redis+sentinel://127.0.0.1:s1,127.0.0.1:s2,127.0.0.1:s3/<name>``."""
        hosts = ",".join(f"{HOST}:{node.port}" for node in self.sentinel_nodes)
        return f"redis+sentinel://{hosts}/{self.name}"

    def start(self) -> None:
        require_programs("redis-server")
        # Sentinels last: a sentinel learns the replicas from the master's INFO when it
        # connects, then every 10 s, so a replica not yet attached would stay unknown
        # for that long.
        for group in (self.servers, self.sentinel_nodes):
            for node in group:
                node.start()
            for node in group:
                node.wait_up()
            wait_for("the set to be ready", self._not_ready, self.nodes, SETTLE_TIMEOUT)

    def master(self) -> Node:
        """The master that a majority of the sentinels name."""
        named = self._named_masters()
        port, votes = Counter(named.values()).most_common(1)[0] if named else (0, 0)
        if votes <= len(self.sentinel_nodes) // 2:
            raise TopologyError(f"no majority of the sentinels names one master: {named}")
        return self.node_at(port)

    def kill_master(self) -> Node:
        """SIGKILL the master; returns it (``killed_at`` is when) for ``wait_new_master``."""
        old = self.master()
        old.kill()
        return old

    def wait_new_master(self, old: Node, timeout: float = _FAILOVER_TIMEOUT) -> float:
        """Wait until every sentinel names the same master, not ``old``, and it takes a
        write; returns the seconds since ``old`` was killed."""
        if old.killed_at is None:
            raise TopologyError(f"{old} was not killed")
        killed_at = old.killed_at

        def missing() -> str:
            named = self._named_masters()
            ports = set(named.values())
            if old.port in ports or len(ports) != 1:
                return f"the sentinels name {named}"
            return accepts_writes(self.node_at(ports.pop()), "topology-probe")

        wait_for(f"a new master after {old}", missing, self.nodes, timeout)
        return time.monotonic() - killed_at

    def _named_masters(self) -> dict[str, int]:
        named = {}
        for sentinel in self.sentinel_nodes:
            if sentinel.alive:
                _, port = ask(sentinel, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.name)
                named[sentinel.name] = int(port)
        return named

    def _not_ready(self) -> str:
        """What the set still lacks at start (when the first server is the master)."""
        master, *replicas = self.servers
        for replica in replicas:
            if missing := _unlinked(replica):
                return missing
        attached = ask(master, "INFO", "replication").get("connected_slaves")
        if attached != len(replicas):
            return f"{master} has {attached} replicas attached"
        for sentinel in self.sentinel_nodes:
            if not sentinel.alive:
                continue  # not started yet
            state = ask(sentinel, "SENTINEL", "MASTER", self.name)
            if state.get("flags") != "master" or int(state["port"]) != master.port:
                return f"{sentinel} sees the master as {state}"
            others = int(state["num-other-sentinels"])
            if others != len(self.sentinel_nodes) - 1:
                return f"{sentinel} knows {others} other sentinels"
            known = ask(sentinel, "SENTINEL", "REPLICAS", self.name)
            linked = [r for r in known if r.get("master-link-status") == "ok"]
            if len(linked) != len(replicas):
                return f"{sentinel} knows {len(linked)} replicas in sync"
        return ""
