"""The commands that run the gateway: ``serve``, ``demo-upstream`` and ``fleet``. Each
needs the gateway extra, and imports its stack (uvicorn, FastAPI, ...) only when it
runs, with a one-line hint of what to install when it is missing."""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import os
import re
import secrets
import shutil
import signal
import sys
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING

from ..config.redisclient import redacted_url
from ..localfleet.tempdirs import owned_tempdir, remove_orphans
from ..server.supervisor import SUPERVISOR_ENV
from .exits import EXIT_OK, EXIT_UNREACHABLE, CommandError

if TYPE_CHECKING:
    from ..config.settings import GatewayConfig


#: This package's import name: ``fleetbreaker`` when installed, ``app`` in a checkout.
#: uvicorn's import strings name it, so that a worker imports this very gateway.
PACKAGE = __name__.partition(".")[0]
#: The extra whose packages run the gateway (pyproject.toml's list of them).
GATEWAY_EXTRA = "gateway"

# -- the gateway extra ------------------------------------------------------------------


def missing_gateway_packages() -> list[str]:
    """The packages of the gateway extra that are not installed, by the names
    pyproject.toml gives them (read from this install's metadata); none in a checkout
    that is not installed, whose imports speak for themselves."""
    try:
        requirements = importlib.metadata.requires("fleetbreaker") or []
    except importlib.metadata.PackageNotFoundError:
        return []
    extra = re.compile(rf"""extra\s*==\s*["']{GATEWAY_EXTRA}["']""")
    names = [
        re.split(r"[\s\[<>=!~;]", requirement, maxsplit=1)[0]
        for requirement in requirements
        if extra.search(requirement)
    ]
    return [name for name in names if not _installed(name)]


def _installed(distribution: str) -> bool:
    try:
        importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def _require_gateway(command: str, why: str = "") -> None:
    """One line naming what to install, when ``command`` needs the gateway's stack."""
    if missing_gateway_packages():
        raise CommandError(
            f"fleetbreaker {command}{why} needs the {GATEWAY_EXTRA} extra: "
            f"pip install 'fleetbreaker[{GATEWAY_EXTRA}]' (from a clone, as it is on no "
            f"package index: pip install '.[{GATEWAY_EXTRA}]')"
        )


def gateway_config(command: str, environ: dict[str, str] | None = None) -> GatewayConfig:
    """The gateway's configuration (the environment, ``BREAKER_CONFIG``); a bad one is
    exit 2 in one line."""
    _require_gateway(command, " with BREAKER_CONFIG or BREAKER_UPSTREAMS")
    from ..config.sections import ConfigError
    from ..config.settings import load_config

    try:
        return load_config(environ)
    except ConfigError as exc:
        raise CommandError(f"invalid configuration: {exc}") from None


# -- serve ----------------------------------------------------------------------------


def serve(args: argparse.Namespace) -> int:
    _require_gateway(args.command)
    import uvicorn

    from ..server.connections import connection_protocol
    from ..server.logs import log_config

    if args.workers < 1:
        raise CommandError("--workers must be at least 1")
    if args.admin_port is not None and not 1 <= args.admin_port <= 65535:
        raise CommandError("--admin-port must be 1..65535")
    remove_orphans()
    os.environ.setdefault("BREAKER_PUBLIC_URL", f"http://{_url_host(args.host)}:{args.port}")
    # The workers read the admin listener's address from the environment, as the rest.
    if args.admin_host is not None:
        os.environ["BREAKER_ADMIN_HOST"] = args.admin_host
    if args.admin_port is not None:
        os.environ["BREAKER_ADMIN_PORT"] = str(args.admin_port)
    config = gateway_config(args.command)  # refused here, once, not in each worker
    if config.admin_port == args.port:
        raise CommandError(
            f"port {args.port} is the proxy's (--port) and the admin listener's: the admin "
            "API must not share an origin with what upstreams serve: pick another with "
            "--admin-port"
        )
    _check_port(args.host, args.port, "--port")
    _check_port(config.admin_host, config.admin_port, "--admin-port")
    _check_redis(config)
    if config.demo and config.admin_token is None:
        token = secrets.token_urlsafe(18)
        os.environ["BREAKER_ADMIN_TOKEN"] = token
        config = gateway_config(args.command)
    if config.redis_url is None and args.workers > 1:
        print(
            "fleetbreaker: warning: no BREAKER_REDIS_URL, so each of the "
            f"{args.workers} workers keeps breakers of its own",
            file=sys.stderr,
        )
    if config.demo:
        print(_demo_banner(config, os.environ["BREAKER_PUBLIC_URL"]), flush=True)
    with _workers_environment(args.workers):
        uvicorn.run(
            f"{PACKAGE}.server.main:create_app",
            factory=True,
            host=args.host,
            port=args.port,
            workers=args.workers,
            log_config=log_config(args.log_level),
            access_log=args.access_log,
            timeout_graceful_shutdown=5,
            # The gateway is a proxy: it appends the address of the peer that sent it
            # the request to X-Forwarded-For. uvicorn's proxy headers would replace
            # that peer (a load balancer) with the client the balancer named.
            proxy_headers=False,
            http=connection_protocol(config),  # heads whole and in time; connections capped
        )
    return EXIT_OK


def _check_port(host: str, port: int, option: str) -> None:
    from ..config.preflight import listen_problem

    problem = listen_problem(host, port, option)
    if problem is not None:
        raise CommandError(problem)


def _check_redis(config: GatewayConfig) -> None:
    """One line when Redis does not answer at start: what the gateway does without it,
    or, with ``require_redis``, that it will not start."""
    from ..config.preflight import redis_problem, unreachable_redis

    if config.redis_url is None:
        return
    reason = redis_problem(config.redis_url)
    if reason is None:
        return
    if config.require_redis:
        raise CommandError(
            f"Redis at {redacted_url(config.redis_url)} unreachable ({reason}): "
            "not starting, as gateway.require_redis is true",
            EXIT_UNREACHABLE,
        )
    print(f"fleetbreaker: warning: {unreachable_redis(config, reason)}", file=sys.stderr)


def _url_host(host: str) -> str:
    """How a client on this machine reaches a server listening on ``host``."""
    if host in ("0.0.0.0", "::", ""):  # noqa: S104 - recognising it, not binding  # nosec B104
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


def demo_upstream(args: argparse.Namespace) -> int:
    _require_gateway(args.command)
    import uvicorn

    from ..server.logs import log_config

    _check_port(args.host, args.port, "--port")
    print(
        f"fleetbreaker demo-upstream: on http://{_url_host(args.host)}:{args.port} "
        "(GET /mode, PUT /mode to change how it answers, GET /hits)",
        flush=True,
    )
    uvicorn.run(
        f"{PACKAGE}.server.demo:create_demo_upstream",
        factory=True,
        host=args.host,
        port=args.port,
        log_config=log_config("warning"),
        timeout_graceful_shutdown=5,
    )
    return EXIT_OK


# -- fleet ------------------------------------------------------------------------------


def fleet(args: argparse.Namespace) -> int:
    _require_gateway(args.command)
    from ..localfleet.fleet import Fleet
    from ..localfleet.services import FleetError

    remove_orphans()
    stop = threading.Event()

    def request_stop(signum: int, frame: object) -> None:
        stop.set()

    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, request_stop)
    try:
        fleet = Fleet(
            replicas=args.replicas,
            workers=args.workers,
            lb_port=args.port,
            upstream_port=args.upstream_port,
            redis_url=os.environ.get("BREAKER_REDIS_URL") or None,
            redis=args.redis,
            admin_token=os.environ.get("BREAKER_ADMIN_TOKEN") or None,
        )
        fleet.start(cancelled=stop)
    except FleetError as exc:
        raise CommandError(str(exc)) from None
    try:
        print(fleet.summary(), flush=True)
        while not stop.wait(0.5):
            for name, code in fleet.exits():
                print(f"fleetbreaker fleet: {name} exited (code {code})", flush=True)
    finally:
        print("fleetbreaker fleet: stopping", flush=True)
        fleet.stop()
    return EXIT_OK


@contextlib.contextmanager
def _workers_environment(workers: int) -> Iterator[None]:
    """What several workers inherit: prometheus-client's multiprocess mode, in a folder
    of our own, and this process's pid, which each watches (``supervisor``)."""
    if workers == 1:
        os.environ.pop(SUPERVISOR_ENV, None)  # not inherited from a serve above this one
        yield
        return
    os.environ[SUPERVISOR_ENV] = str(os.getpid())
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        yield
        return
    folder = owned_tempdir("metrics")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(folder)
    try:
        yield
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def admin_url(config: GatewayConfig) -> str:
    """Where a client on this machine reaches the admin listener."""
    return f"http://{_url_host(config.admin_host)}:{config.admin_port}"


def _demo_banner(config: GatewayConfig, public_url: str) -> str:
    token = config.admin_token
    base = public_url.rstrip("/")
    admin = admin_url(config)
    from ..config.settings import DEMO_UPSTREAM

    demo = config.upstreams[DEMO_UPSTREAM].breaker
    assert demo is not None  # the demo upstream always has its breaker
    threshold = demo.failure_threshold
    return "\n".join(
        [
            "",
            f"fleetbreaker demo: gateway on {base}, upstream 'demo' served at {base}/demo",
            f"({config.backend} backend; admin token for this run: {token})",
            f"Dashboard: {admin}/dashboard (a listener of its own, with /admin, /metrics "
            "and /docs)",
            "",
            "1. A request that works:",
            f"   curl -i {base}/proxy/demo/hello",
            "",
            f"2. Trip the breaker: {threshold} failing calls, then it answers 503 without "
            "calling the upstream:",
            f"   for i in $(seq {threshold + 2}); do curl -s -o /dev/null -w '%{{http_code}}\\n' "
            f"{base}/proxy/demo/status/500; done",
            "",
            "3. The admin view of the breaker (then reset it with POST .../demo/reset):",
            f"   curl -s -H 'Authorization: Bearer {token}' {admin}/admin/breakers/demo",
            "",
        ]
    )
