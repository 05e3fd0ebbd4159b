"""A Sentinel set on this machine (``SentinelSet``: a master, two replicas and three
sentinels), started, waited for, failed over and stopped."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

from .nodes import (
    FAILOVER_TIMEOUT,
    SETTLE_TIMEOUT,
    Node,
    Topology,
    TopologyError,
    accepts_writes,
    ask,
    redis_server_command,
    require_programs,
    unlinked,
    wait_for,
)
from .ports import HOST, free_ports


class SentinelSet(Topology):
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

    def wait_new_master(self, old: Node, timeout: float = FAILOVER_TIMEOUT) -> float:
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
            if missing := unlinked(replica):
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
