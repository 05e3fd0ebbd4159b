"""A Redis Cluster on this machine (``LocalCluster``: 3 primaries and a replica each),
started, waited for, broken and stopped, and what its nodes say of each other."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from .nodes import (
    FAILOVER_TIMEOUT,
    SETTLE_TIMEOUT,
    Node,
    Topology,
    TopologyError,
    accepts_writes,
    ask,
    key_in_slot,
    redis_server_command,
    require_programs,
    slot_of,
    unlinked,
    wait_for,
)
from .ports import HOST, free_ports

_CREATE_TIMEOUT = 30.0  # for redis-cli --cluster create, which polls once a second
_T = TypeVar("_T")


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


class LocalCluster(Topology):
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
        self, key_or_slot: str | bytes | int, old: Node, timeout: float = FAILOVER_TIMEOUT
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
            if node.alive and entry.replicates is not None and (missing := unlinked(node)):
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


def _describe(view: Iterable[ClusterEntry]) -> str:
    parts = []
    for e in sorted(view, key=lambda e: e.port):
        role = "primary" if e.primary else f"replica of {e.replicates}"
        slots = ",".join(f"{a}-{b}" for a, b in e.slots)
        parts.append(f"{e.port} {role}{' [' + slots + ']' if slots else ''}{' FAIL' * e.failed}")
    return ", ".join(parts)
