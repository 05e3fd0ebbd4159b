"""``fleetbreaker fleet``: the docker compose topology, as local processes.

- **Redis:** the one at ``BREAKER_REDIS_URL``, or one of its own, persisting nothing:
  a ``redis-server`` on a free port; with ``redis="cluster"`` a Redis Cluster of 3
  primaries and 3 replicas, with ``redis="sentinel"`` a Sentinel set (a master, 2
  replicas, 3 sentinels), started and stopped by ``cluster`` and ``sentinel``.
- **The demo upstream** (``fleetbreaker demo-upstream``), on a free port.
- **N gateway replicas x W workers** (``fleetbreaker serve``), on free ports, each
  with ``deploy/fleet.toml``, the shared Redis and one admin token, and each with an
  admin listener (the admin API, the dashboard, ``/metrics``) on a free port of its own.
- **nginx** with ``deploy/nginx.conf``, the very file compose mounts, rewritten only
  on its two lines marked ``fleet:`` (addresses), in front of the replicas' proxy
  ports only: no admin port is ever behind it. Its pid and logs go where its
  command line says (``-p``, ``-e``, ``-g``).

Every process runs in a session of its own, so a Ctrl-C in the terminal reaches only
this one, which stops them in order (nginx, replicas, upstream, Redis), kills any
straggler's whole process group, and removes its temporary folder. Their output is
shown prefixed with their name, as compose does (a Cluster's or a Sentinel set's
nodes log to ``redis.log`` in their folder of the temporary one). Where util-linux's ``setpriv`` is
installed, each is started under ``--pdeathsig TERM``: if this process is killed
outright, the kernel stops them anyway, and the next ``fleetbreaker`` start removes
the temporary folder it left (``tempdirs``).
"""

from __future__ import annotations

import os
import secrets
import shutil
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

from breaker import ConfigurationError

from ..config.preflight import redis_problem
from ..config.redisclient import check_url, redacted_url
from ..config.settings import MIN_ADMIN_TOKEN_LENGTH
from .cluster import LocalCluster
from .nginx import NGINX_PATH, nginx_conf_for
from .nodes import TopologyError, redis_server_command
from .ports import free_port
from .sentinel import SentinelSet
from .services import (
    FleetError,
    Service,
    find_program,
    fleetbreaker_command,
    http_ok,
    port_is_free,
    redis_answers,
    serve_command,
    wait_ready,
)
from .tempdirs import owned_tempdir

#: The deploy files compose uses; a checkout has them next to ``app/``.
DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
NGINX_CONF = DEPLOY / "nginx.conf"
FLEET_CONFIG = DEPLOY / "fleet.toml"
#: The demo upstream's name, as in ``docker-compose.yml``'s ``BREAKER_UPSTREAMS``.
UPSTREAM_NAME = "demo"

#: What ``--redis`` can start: the topologies of ``/readyz``.
REDIS_KINDS = ("standalone", "cluster", "sentinel")


class Fleet:
    """The topology of ``docker-compose.yml`` on this machine. Ports are chosen when it
    is made, so that a caller can write a configuration naming them before ``start``.

    >>> with Fleet(replicas=3, workers=2) as fleet:   # doctest: +SKIP
    ...     httpx.get(f"{fleet.lb_url}/proxy/demo/hello")
    """

    def __init__(
        self,
        *,
        replicas: int = 3,
        workers: int = 2,
        lb_port: int | None = None,
        upstream_port: int | None = None,
        redis_url: str | None = None,
        redis: str = "standalone",
        config: Path = FLEET_CONFIG,
        upstreams: str | None = None,
        replica_upstreams: dict[int, str] | None = None,
        admin_token: str | None = None,
        nginx_conf: Path = NGINX_CONF,
        output: TextIO = sys.stdout,
    ) -> None:
        if replicas < 1 or workers < 1:
            raise FleetError("--replicas and --workers must be at least 1")
        if redis not in REDIS_KINDS:
            raise FleetError(f"--redis must be one of {', '.join(REDIS_KINDS)}, not {redis!r}")
        if redis != "standalone" and redis_url is not None:
            raise FleetError(
                f"--redis {redis} starts a Redis of its own: unset BREAKER_REDIS_URL, "
                "or leave --redis out to use that one"
            )
        self.replicas = replicas
        self.workers = workers
        self.lb_port = lb_port if lb_port is not None else free_port()
        self.upstream_port = upstream_port if upstream_port is not None else free_port()
        self.replica_ports = [free_port() for _ in range(replicas)]
        self.admin_ports = [free_port() for _ in range(replicas)]
        self.own_redis = redis_url is None
        self.redis = redis
        self.redis_port = free_port() if redis_url is None and redis == "standalone" else None
        self._redis_url = redis_url or f"redis://127.0.0.1:{self.redis_port}/0"
        # A Cluster's or a Sentinel set's: made by start(), in the temporary folder.
        self.topology: LocalCluster | SentinelSet | None = None
        self.config = config
        self.upstreams = (
            upstreams if upstreams is not None else f"{UPSTREAM_NAME}={self.upstream_url}"
        )
        # BREAKER_UPSTREAMS of some replicas (by index, from 1) instead: a replica whose
        # path to an upstream differs, as a broken network would make it.
        self.replica_upstreams = dict(replica_upstreams or {})
        if admin_token is not None and len(admin_token.strip()) < MIN_ADMIN_TOKEN_LENGTH:
            raise FleetError(
                f"BREAKER_ADMIN_TOKEN: must be at least {MIN_ADMIN_TOKEN_LENGTH} characters, "
                f"got {len(admin_token.strip())}"
            )
        self.admin_token = admin_token or secrets.token_urlsafe(18)
        self.nginx_conf = nginx_conf
        self.output = output
        self.workdir: Path | None = None
        self.nginx: str | None = None  # found by start()
        self.services: dict[str, Service] = {}
        self._dead: set[str] = set()  # the nodes exits() told of
        self._lock = threading.Lock()

    @property
    def redis_url(self) -> str:
        """The URL every replica is given (a Cluster's or a Sentinel set's once started)."""
        if self.topology is not None:
            return self.topology.url
        if self.redis != "standalone":
            raise FleetError(f"the fleet's {self.redis} has no URL until the fleet starts")
        return self._redis_url

    @property
    def lb_url(self) -> str:
        return f"http://127.0.0.1:{self.lb_port}"

    @property
    def upstream_url(self) -> str:
        return f"http://127.0.0.1:{self.upstream_port}"

    @property
    def replica_urls(self) -> list[str]:
        """Each replica's proxy listener, as nginx reaches it."""
        return [f"http://127.0.0.1:{port}" for port in self.replica_ports]

    @property
    def admin_urls(self) -> list[str]:
        """Each replica's admin listener: the admin API, the dashboard, /metrics."""
        return [f"http://127.0.0.1:{port}" for port in self.admin_ports]

    def replica(self, index: int) -> Service:
        """Replica ``index`` (from 1, as compose numbers them)."""
        return self.services[f"gateway-{index}"]

    def __enter__(self) -> Fleet:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- start ---------------------------------------------------------------------

    def start(self, cancelled: threading.Event | None = None) -> None:
        """Start everything and wait until each answers; on any failure (or when
        ``cancelled`` is set meanwhile) stop what started and raise ``FleetError``."""
        cancelled = cancelled or threading.Event()
        self._check_prerequisites()
        self.workdir = owned_tempdir("fleet")
        # nginx's workers run as an unprivileged user when nginx is started as root:
        # they must be able to reach their temporary folders in here.
        self.workdir.chmod(0o711)
        try:
            if self.redis != "standalone":
                self._start_topology()
            elif self.own_redis:
                self._launch(self._redis_service())
            self._launch(self._upstream_service())
            self._wait_ready(cancelled)
            for index in range(1, self.replicas + 1):
                self._launch(self._replica_service(index))
            self._wait_ready(cancelled)
            self._launch(self._nginx_service())
            self._wait_ready(cancelled)
        except BaseException:
            self.stop()
            raise

    def _check_prerequisites(self) -> None:
        self.nginx = find_program("nginx", "install it (apt-get install -y nginx)", NGINX_PATH)
        if self.own_redis:
            programs = (
                ("redis-server", "redis-cli") if self.redis == "cluster" else ("redis-server",)
            )
            for program in programs:
                find_program(
                    program,
                    "install it (apt-get install -y redis-server) or set BREAKER_REDIS_URL",
                )
        else:
            try:
                check_url(self._redis_url)
            except ConfigurationError as exc:
                raise FleetError(str(exc)) from None
            problem = redis_problem(self._redis_url)
            if problem is not None:
                where = redacted_url(self._redis_url)
                raise FleetError(f"cannot reach Redis at {where}: {problem}")
        for path in (self.nginx_conf, self.config):
            if not path.is_file():
                raise FleetError(f"{path} not found: run from a checkout of fleetbreaker")
        for port, option in ((self.lb_port, "--port"), (self.upstream_port, "--upstream-port")):
            if not port_is_free(port):
                raise FleetError(f"port {port} is in use: pick another with {option}")

    def _start_topology(self) -> None:
        """A Cluster or a Sentinel set of the fleet's own, each process guarded as the
        other services are; its wait for a settled topology is bounded."""
        assert self.workdir is not None
        folder = self.workdir / self.redis
        self.topology = (
            LocalCluster(folder, guarded=True)
            if self.redis == "cluster"
            else SentinelSet(folder, guarded=True)
        )
        try:
            self.topology.start()
        except TopologyError as exc:
            what, _, logs = str(exc).partition("\n")
            with self._lock:
                for line in logs.splitlines():
                    self.output.write(f"{self.redis:<10} | {line}\n")
                self.output.flush()
            raise FleetError(f"the {self.redis} did not start: {what}") from None

    def _launch(self, service: Service) -> None:
        self.services[service.name] = service
        service.start(self.output, self._lock)

    def _wait_ready(self, cancelled: threading.Event) -> None:
        wait_ready(
            [service for service in self.services.values() if not service.answered], cancelled
        )

    def _environ(self, **extra: str) -> dict[str, str]:
        environ = {k: v for k, v in os.environ.items() if not k.startswith("BREAKER_")}
        environ.pop("PROMETHEUS_MULTIPROC_DIR", None)  # each replica makes its own
        return {**environ, **extra}

    def _redis_service(self) -> Service:
        assert self.workdir is not None
        data = self.workdir / "redis"
        data.mkdir()
        port = self.redis_port
        assert port is not None
        return Service(
            name="redis",
            argv=redis_server_command(port, data),
            environ=self._environ(),
            ready=lambda: redis_answers(self.redis_url),
        )

    def _upstream_service(self) -> Service:
        return Service(
            name="upstream",
            argv=[*fleetbreaker_command(), "demo-upstream", "--port", str(self.upstream_port)],
            environ=self._environ(),
            ready=lambda: http_ok(f"{self.upstream_url}/mode"),
        )

    def _replica_service(self, index: int) -> Service:
        port = self.replica_ports[index - 1]
        url = self.replica_urls[index - 1]
        admin = self.admin_urls[index - 1]
        return Service(
            name=f"gateway-{index}",
            argv=serve_command(port, self.admin_ports[index - 1], workers=self.workers),
            environ=self._environ(
                BREAKER_REDIS_URL=self.redis_url,
                BREAKER_CONFIG=str(self.config),
                BREAKER_UPSTREAMS=self.replica_upstreams.get(index, self.upstreams),
                BREAKER_ADMIN_TOKEN=self.admin_token,
                BREAKER_PUBLIC_URL=self.lb_url,
                # Every replica runs on this one host: the host name can't tell them apart.
                BREAKER_INSTANCE_NAME=f"gateway-{index}",
            ),
            ready=lambda: http_ok(f"{url}/healthz") and http_ok(f"{admin}/healthz"),
        )

    def _nginx_service(self) -> Service:
        assert self.workdir is not None
        assert self.nginx is not None
        # nginx's own folder (its prefix: its temporary files): run as root, nginx's
        # workers run as another user, which must be able to reach it to write a
        # request body there (the fleet's folder is only traversed, never listed).
        home = self.workdir / "nginx"
        home.mkdir(mode=0o755)
        self.workdir.chmod(0o711)
        conf = home / "nginx.conf"
        conf.write_text(
            nginx_conf_for(self.nginx_conf.read_text(), self.lb_port, self.replica_ports)
        )
        prefix = f"{home}/"
        return Service(
            name="lb",
            argv=[
                self.nginx,
                "-p",
                prefix,
                "-c",
                str(conf),
                "-e",
                "stderr",
                "-g",
                f"daemon off; pid {self.workdir}/nginx.pid;",
            ],
            environ=self._environ(),
            ready=lambda: http_ok(f"{self.lb_url}/healthz"),
        )

    # -- run and stop ----------------------------------------------------------------

    def summary(self) -> str:
        lines = [
            f"fleetbreaker fleet: {self.replicas} replicas x {self.workers} workers "
            f"behind nginx, sharing one {self._redis_kind()}",
            f"  load balancer  {self.lb_url}",
            f"  replicas       {' '.join(self.replica_urls)}",
            f"  admin API      {' '.join(self.admin_urls)}   (each replica's, with "
            "/dashboard and /metrics; never behind nginx)",
            f"  upstream       {self.upstream_url}   (demo; PUT /mode to break it)",
            f"  redis          {redacted_url(self.redis_url)}   ({self._redis_note()})",
            f"  admin token    {self.admin_token}",
            f"  temporary      {self.workdir}",
            "",
            "Try:",
            f"  curl -i {self.lb_url}/proxy/{UPSTREAM_NAME}/hello",
            f"  curl -X PUT {self.upstream_url}/mode -H 'Content-Type: application/json' "
            '-d \'{"mode": "failing"}\'',
            f"  curl -H 'Authorization: Bearer {self.admin_token}' "
            f"{self.admin_urls[0]}/admin/breakers/{UPSTREAM_NAME}",
            f"  {self.admin_urls[0]}/dashboard   (in a browser: any replica's shows the fleet)",
            *self._redis_cli_lines(),
            "",
            "Ctrl-C stops everything.",
        ]
        return "\n".join(lines)

    def _redis_kind(self) -> str:
        return {"cluster": "Redis Cluster", "sentinel": "Sentinel set"}.get(self.redis, "Redis")

    def _redis_note(self) -> str:
        if not self.own_redis:
            return "BREAKER_REDIS_URL"
        if self.redis == "cluster":
            return "its own: 3 primaries, 3 replicas; gone at exit"
        if self.redis == "sentinel":
            return "its own: a master, 2 replicas, 3 sentinels; gone at exit"
        return "its own, gone at exit"

    def _redis_cli_lines(self) -> list[str]:
        """How to read the demo's breaker with redis-cli, where it is now."""
        key = f"'breaker:{{{UPSTREAM_NAME}}}'"
        if isinstance(self.topology, LocalCluster):
            port = self.topology.primary_for(key.strip("'")).port
            return [f"  redis-cli -c -p {port} HGETALL {key}   (-c: follow the slot's MOVED)"]
        if isinstance(self.topology, SentinelSet):
            sentinel = self.topology.sentinel_nodes[0].port
            master = self.topology.master().port
            return [
                f"  redis-cli -p {sentinel} SENTINEL get-master-addr-by-name {self.topology.name}",
                f"  redis-cli -p {master} HGETALL {key}   (the master it names now)",
            ]
        return [f"  redis-cli -u {redacted_url(self.redis_url)} HGETALL {key}"]

    def exits(self) -> Iterator[tuple[str, int]]:
        """Services, and nodes of the fleet's Cluster or Sentinel set, that died since the
        last call: (name, exit code), each once."""
        for service in self.services.values():
            if service.process is not None and not service.alive and not service.reported_exit:
                service.reported_exit = True
                yield service.name, service.process.returncode
        nodes = self.topology.nodes if self.topology is not None else []
        for node in nodes:
            if node.process is not None and not node.alive and node.name not in self._dead:
                self._dead.add(node.name)
                yield node.name, node.process.returncode

    def stop(self) -> None:
        """Stop in the reverse order of start; remove the temporary folder."""
        for service in reversed(list(self.services.values())):
            service.stop()
        self.services.clear()
        if self.topology is not None:
            self.topology.stop()  # every node by its pid; its folder goes with ours
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None
