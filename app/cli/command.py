"""``fleetbreaker``: serve the gateway, and inspect or control breakers in Redis.

Exit codes: 0 done; 1 Redis could not be reached (also ``serve`` with
``require_redis``); 2 bad usage, bad configuration, a port in use, an unknown breaker or
a command that runs the gateway without the gateway extra installed; 3 uvicorn could not
start the server, which it logs. Errors are one line on stderr, never a traceback.

The commands that talk to Redis (``status``, ``reset``, ``open``, ``disable``,
``watch``) need only the library: this module imports the gateway's stack (FastAPI,
pydantic-settings, uvicorn, ...) inside the commands that run the gateway (``serve``,
``demo-upstream``, ``fleet``) or read its configuration, so that ``pip install
fleetbreaker`` without the ``gateway`` extra gets them, and a one-line hint from the
others.

What Redis says (breaker names, states, the reasons of transitions; anyone who may
write a key or PUBLISH can choose them) and every error line are printed through
``shown``: a terminal never sees their control characters, only escapes of them.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import functools
import importlib.metadata
import json
import logging
import os
import queue
import re
import secrets
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from breaker import (
    BackendUnavailableError,
    BreakerOperator,
    BreakerSnapshot,
    ConfigurationError,
    EventFollower,
    TransitionEvent,
    __version__,
)

from ..config.redisclient import (
    REDIS_ERRORS,
    close,
    ping,
    reason,
    redacted_url,
    sync_client,
    topology_of,
)
from ..localfleet.tempdirs import owned_tempdir, remove_orphans
from ..server.supervisor import SUPERVISOR_ENV

if TYPE_CHECKING:
    from ..config.settings import GatewayConfig

EXIT_OK = 0
EXIT_UNREACHABLE = 1
EXIT_USAGE = 2
#: This package's import name: ``fleetbreaker`` when installed, ``app`` in a checkout.
#: uvicorn's import strings name it, so that a worker imports this very gateway.
PACKAGE = __name__.partition(".")[0]
#: The extra whose packages run the gateway (pyproject.toml's list of them).
GATEWAY_EXTRA = "gateway"
_T = TypeVar("_T")
#: How long a command waits for any one reply of Redis.
REDIS_TIMEOUT = 5.0
#: On a Cluster, how often ``watch`` looks for breakers it does not follow yet.
RESCAN_EVERY = 5.0
#: On a Sentinel set or a Cluster, how long ``watch`` tries to subscribe again after
#: losing a connection: a failover takes a few seconds.
FAILOVER_WAIT = 30.0
_POLL = 0.2


class CommandError(Exception):
    def __init__(self, message: str, code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.code = code


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.run(args)
    except CommandError as exc:
        print(f"fleetbreaker: {shown(str(exc))}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        return EXIT_OK
    return code


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each option's default, except where there is none worth showing (a flag
    that is off, or no default at all)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or isinstance(action.default, bool):
            return action.help
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    """The ``fleetbreaker`` command line: one subcommand per task, each with its help."""
    parser = argparse.ArgumentParser(
        prog="fleetbreaker",
        description="A circuit breaker and retry gateway, shared via Redis.",
        epilog="Exit codes: 0 done; 1 Redis unreachable; 2 bad usage, bad configuration, "
        "a port in use or an unknown breaker; 3 the server did not start (its log line "
        "says why).",
        formatter_class=_HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(required=True, metavar="COMMAND", dest="command")

    def command(name: str, text: str, details: str = "") -> argparse.ArgumentParser:
        return commands.add_parser(
            name,
            help=text,
            description=f"{text}. {details}" if details else text,
            formatter_class=_HelpFormatter,
        )

    serve = command(
        "serve",
        "run the gateway (uvicorn)",
        "The proxy listens on --host and --port; the admin API, the dashboard, /metrics "
        "and /docs on a listener of their own, --admin-host and --admin-port, which a "
        "load balancer must never expose.",
    )
    serve.add_argument("--host", default="127.0.0.1", help="the proxy's address")
    serve.add_argument("--port", type=int, default=8000, help="the proxy's port")
    serve.add_argument(
        "--admin-host",
        help="the admin listener's address (default: $BREAKER_ADMIN_HOST, else "
        "[gateway] admin_host, else 127.0.0.1)",
    )
    serve.add_argument(
        "--admin-port",
        type=int,
        help="the admin listener's port (default: $BREAKER_ADMIN_PORT, else "
        "[gateway] admin_port, else 8001)",
    )
    serve.add_argument(
        "--workers", type=int, default=1, help="worker processes (they share breakers via Redis)"
    )
    serve.add_argument(
        "--log-level",
        default="info",
        choices=["debug", "info", "warning"],
        help="the least severe level logged",
    )
    serve.add_argument("--access-log", action="store_true", help="log every request")
    serve.set_defaults(run=_serve)

    upstream = command("demo-upstream", "run the flaky demo upstream on its own (one process)")
    upstream.add_argument("--host", default="127.0.0.1", help="the address to listen on")
    upstream.add_argument("--port", type=int, default=9000, help="the port to listen on")
    upstream.set_defaults(run=_demo_upstream)

    fleet = command("fleet", "run docker-compose.yml's topology as local processes (needs nginx)")
    fleet.add_argument("--replicas", type=int, default=3, help="gateway replicas")
    fleet.add_argument("--workers", type=int, default=2, help="worker processes per replica")
    fleet.add_argument("--port", type=int, default=8080, help="the load balancer's (nginx) port")
    fleet.add_argument("--upstream-port", type=int, default=9000, help="the demo upstream's port")
    fleet.add_argument(
        "--redis",
        choices=["standalone", "cluster", "sentinel"],
        default="standalone",
        help="the Redis the fleet shares: standalone is the one at $BREAKER_REDIS_URL, or "
        "a redis-server of its own; cluster starts a Redis Cluster of 3 primaries and 3 "
        "replicas, sentinel a Sentinel set (a master, 2 replicas, 3 sentinels)",
    )
    fleet.set_defaults(run=_fleet)

    def with_redis(command: argparse.ArgumentParser) -> argparse.ArgumentParser:
        command.add_argument(
            "--redis-url",
            help="the Redis holding the breakers: redis://, rediss://, unix://, "
            "redis+cluster://host:port[,host:port...] or "
            "redis+sentinel://host:port[,host:port...]/<master>[/<db>] "
            "(default: $BREAKER_REDIS_URL)",
        )
        return command

    status = with_redis(command("status", "every breaker, read from Redis"))
    status.add_argument("--json", action="store_true", help="one JSON object per breaker")
    status.set_defaults(run=_status)
    for name, action, text in (
        ("reset", "reset", "close a breaker and clear its counters, fleet-wide"),
        ("open", "force_open", "force a breaker open, fleet-wide, until a reset"),
        ("disable", "disable", "let every call through (still counted) until a reset"),
    ):
        control = with_redis(command(name, text))
        control.add_argument("name", help="the breaker's name: its upstream's")
        control.set_defaults(run=_control, action=action)
    watch = with_redis(
        command(
            "watch",
            "print transitions as they happen, in local time",
            "On a Redis Cluster, where "
            "each breaker publishes on a channel of its own in its shard, it finds the "
            "breakers by SCAN on every primary, subscribes to each one's channel "
            f"(SSUBSCRIBE), and looks for new breakers every {RESCAN_EVERY:g} s. On a "
            "Cluster or a Sentinel set, it subscribes again after a failover (for up to "
            f"{FAILOVER_WAIT:g} s); transitions in between are not shown.",
        )
    )
    watch.set_defaults(run=_watch)
    return parser


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


def _load_config(command: str, environ: dict[str, str] | None = None) -> GatewayConfig:
    """The gateway's configuration (the environment, ``BREAKER_CONFIG``); a bad one is
    exit 2 in one line."""
    _require_gateway(command, " with BREAKER_CONFIG or BREAKER_UPSTREAMS")
    from ..config.settings import ConfigError, load_config

    try:
        return load_config(environ)
    except ConfigError as exc:
        raise CommandError(f"invalid configuration: {exc}") from None


# -- serve ----------------------------------------------------------------------------


def _serve(args: argparse.Namespace) -> int:
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
    config = _load_config(args.command)  # refused here, once, not in each worker
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
        config = _load_config(args.command)
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


def _demo_upstream(args: argparse.Namespace) -> int:
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


def _fleet(args: argparse.Namespace) -> int:
    _require_gateway(args.command)
    from ..localfleet.fleet import Fleet, FleetError

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


# -- Redis commands ---------------------------------------------------------------------


#: Why a Redis command can't see the demo's breakers, and what to do instead.
NO_REDIS = (
    "no Redis to talk to: pass --redis-url or set BREAKER_REDIS_URL (a gateway without "
    "Redis, like the demo, keeps its breakers inside its own process, where this command "
    "can't see them: start it with BREAKER_REDIS_URL=redis://127.0.0.1:6379/0, or ask "
    "its admin API, GET /admin/breakers on its admin listener)"
)


def _redis_url(args: argparse.Namespace) -> tuple[str, str]:
    """The URL of the Redis to talk to, and the setting it came from."""
    if args.redis_url:
        return args.redis_url, "--redis-url"
    url = os.environ.get("BREAKER_REDIS_URL")
    if not url:
        raise CommandError(NO_REDIS)
    return url, "BREAKER_REDIS_URL"


def _client(url: str, setting: str) -> Any:
    """A client of ``url`` (a server, a Cluster or a Sentinel set) that answered a PING:
    a bad URL is exit 2, a Redis that does not answer exit 1, each in one line."""
    try:
        client = sync_client(url, timeout=REDIS_TIMEOUT, setting=setting)
    except ConfigurationError as exc:
        raise CommandError(str(exc)) from None
    except REDIS_ERRORS as exc:
        raise _unreachable(url, exc) from None
    try:
        ping(client)
    except REDIS_ERRORS as exc:
        close(client)
        raise _unreachable(url, exc) from None
    return client


def _unreachable(url: str, exc: BaseException) -> CommandError:
    return CommandError(
        f"cannot reach Redis at {redacted_url(url)}: {reason(exc)}", EXIT_UNREACHABLE
    )


def _configured(command: str, redis_url: str) -> tuple[str, list[str]]:
    """The key prefix, and the names of the configured upstreams with a breaker."""
    environ = {**os.environ, "BREAKER_REDIS_URL": redis_url}
    if not environ.get("BREAKER_CONFIG") and not environ.get("BREAKER_UPSTREAMS"):
        return "breaker", []
    config = _load_config(command, environ)
    return config.prefix, [name for name, up in config.upstreams.items() if up.breaker]


@contextlib.contextmanager
def _operator(args: argparse.Namespace) -> Iterator[tuple[BreakerOperator, list[str]]]:
    """The operator for ``--redis-url``, and every breaker name it knows of: those in
    Redis (found by SCAN, on every primary of a Cluster) and the configured ones. It
    acts with each breaker's stored settings."""
    url, setting = _redis_url(args)
    client = _client(url, setting)
    try:
        prefix, configured = _configured(args.command, url)
        with _unreachable_guard(lambda: BreakerOperator(client, prefix=prefix)) as operator:
            names = _unreachable_guard(operator.names)
            yield operator, sorted(set(configured) | set(names))
    finally:
        close(client)


def _status(args: argparse.Namespace) -> int:
    with _operator(args) as (operator, names):
        snapshots = [_unreachable_guard(functools.partial(operator.snapshot, n)) for n in names]
    if args.json:
        for snapshot in snapshots:
            print(json.dumps(snapshot.as_dict(), sort_keys=True))
        return EXIT_OK
    print(_table(snapshots))
    return EXIT_OK


def _open_left(snapshot: BreakerSnapshot) -> str:
    if snapshot.state != "open":
        return "-"
    if snapshot.retry_after <= 0:
        return "half-open on next call"
    return f"{snapshot.retry_after:.1f}s"


def _table(snapshots: list[BreakerSnapshot]) -> str:
    header = ("NAME", "STATE", "FAILURES", "OPEN FOR", "WINDOW CALLS", "WINDOW FAILED")
    rows = [header] + [
        (
            shown(s.name),
            shown(s.state),
            str(s.failures),
            _open_left(s),
            str(s.window_calls),
            str(s.window_failures),
        )
        for s in snapshots
    ]
    if len(rows) == 1:
        return "no breakers in Redis yet"
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


def _control(args: argparse.Namespace) -> int:
    with _operator(args) as (operator, names):
        if args.name not in names:
            known = ", ".join(names) or "none"
            raise CommandError(f"no breaker named '{args.name}' (known: {known})")
        _unreachable_guard(lambda: operator.control(args.name, args.action))
        snapshot = _unreachable_guard(lambda: operator.snapshot(args.name))
    print(shown(f"{snapshot.name}: {snapshot.state}"))
    return EXIT_OK


def _unreachable_guard(operation: Callable[[], _T]) -> _T:
    try:
        return operation()
    except BackendUnavailableError as exc:
        raise CommandError(f"Redis did not answer: {exc.reason}", EXIT_UNREACHABLE) from None
    except REDIS_ERRORS as exc:  # a SCAN, or a Cluster's slot map, asked by the client
        raise CommandError(f"Redis did not answer: {reason(exc)}", EXIT_UNREACHABLE) from None


def _interrupted(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _stop_on_signals() -> None:
    """Ctrl-C and SIGTERM end a long-running command cleanly: also when it was started
    with SIGINT ignored, which a process inherits from a background job or nohup (a
    ``watch`` started so never heard Ctrl-C, and its test waited for it in vain)."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _interrupted)


def _watch(args: argparse.Namespace) -> int:
    """Print the fleet's transitions as the library's follower hears them. What is
    watch's own: which breakers a Cluster has (a scan every ``RESCAN_EVERY``), what it
    tells on stderr, and how long it waits for Redis to come back."""
    _stop_on_signals()
    # Watch tells a lost Redis itself, on stderr: the follower's outage log would say
    # it twice (and the library's logging is the application's to configure).
    logging.getLogger("breaker").setLevel(logging.ERROR)
    url, setting = _redis_url(args)
    client = _client(url, setting)
    try:
        prefix, configured = _configured(args.command, url)
        standalone = topology_of(client) == "standalone"
        notices: queue.SimpleQueue[Exception | None] = queue.SimpleQueue()
        with EventFollower(
            client,
            prefix=prefix,
            on_event=_print_event,
            on_subscribed=lambda: notices.put(None),
            on_lost=notices.put,
        ) as follower:
            _wait_subscribed(follower)
            if follower.cluster:
                _print_err(
                    f"watching every breaker's channel {follower.channel} on the Redis "
                    f"Cluster, looking for new breakers every {RESCAN_EVERY:g} s (Ctrl-C to stop)"
                )
                with BreakerOperator(client, prefix=prefix) as operator:
                    breakers = lambda: [*configured, *operator.names()]  # noqa: E731
                    _follow_notices(follower, notices, breakers, standalone=False)
            else:
                _print_err(f"watching {follower.channel} (Ctrl-C to stop)")
                _follow_notices(follower, notices, None, standalone=standalone)
    finally:
        close(client)
    return EXIT_OK


def _wait_subscribed(follower: EventFollower) -> None:
    if not follower.wait_subscribed(FAILOVER_WAIT):
        raise CommandError(f"could not subscribe in {FAILOVER_WAIT:.0f} s", EXIT_UNREACHABLE)


def _follow_notices(
    follower: EventFollower,
    notices: queue.SimpleQueue[Exception | None],
    breakers: Callable[[], list[str]] | None,
    *,
    standalone: bool,
) -> None:
    """Until Ctrl-C: tell when the follower loses Redis and subscribes again, give up
    when it stays away (at once on a server: nothing will take over from it), and on a
    Cluster find the breakers to follow."""
    followed: set[str] = set()
    next_scan = 0.0
    lost_at: float | None = None
    lost: Exception | None = None
    while True:
        if breakers is not None and lost_at is None and time.monotonic() >= next_scan:
            with contextlib.suppress(*REDIS_ERRORS):  # a node down: the follower says so
                new = sorted(set(breakers()) - followed)
                if new:
                    follower.follow(*new)
                    followed.update(new)
                    follower.wait_subscribed(RESCAN_EVERY)
                    _print_err(f"following {shown(', '.join(new))}")
            next_scan = time.monotonic() + RESCAN_EVERY
        try:
            notice = notices.get(timeout=_POLL)
        except queue.Empty:
            away = 0.0 if lost_at is None else time.monotonic() - lost_at
            if lost is not None and away > FAILOVER_WAIT:
                raise CommandError(
                    f"lost Redis for {FAILOVER_WAIT:.0f} s: {reason(lost)}", EXIT_UNREACHABLE
                ) from None
            continue
        if notice is None:
            if lost_at is not None:
                _print_err(f"subscribed again after {time.monotonic() - lost_at:.1f} s")
                lost_at = lost = None
        elif standalone:
            raise CommandError(f"lost Redis: {reason(notice)}", EXIT_UNREACHABLE) from None
        elif lost_at is None:
            lost_at, lost = time.monotonic(), notice
            _print_err(f"lost Redis ({shown(reason(notice))}): subscribing again")


def _print_err(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _print_event(event: TransitionEvent) -> None:
    print(
        shown(
            f"{local_time(event.at)} {event.name}: {event.from_state} -> "
            f"{event.to_state} ({event.reason})"
        ),
        flush=True,
    )


def local_time(epoch_ms: int, zone: datetime.tzinfo | None = None) -> str:
    """An event's time (epoch ms, Redis's clock) as ISO 8601 in local time, or ``zone``.

    >>> local_time(1795962693548, datetime.timezone.utc)
    '2026-11-29T14:31:33.548+00:00'
    """
    moment = datetime.datetime.fromtimestamp(epoch_ms / 1000, tz=datetime.UTC)
    return moment.astimezone(zone).isoformat(timespec="milliseconds")


def shown(text: str) -> str:
    r"""``text`` as a terminal may print it: each character that is not printable (C0
    and C1 controls, ESC and DEL among them; bidi overrides and other format
    characters; line and paragraph separators; spaces other than ' ') becomes an
    escape, as bash's ``$'...'`` reads it, and so does the backslash, so that no name
    passes for another. Nothing printed can move the cursor, clear the screen, retitle
    the window, reorder a line or add a row.

    >>> shown("evil\x1b[2J\u202eexe")
    'evil\\x1b[2J\\u202eexe'
    """
    if text.isprintable() and "\\" not in text:
        return text
    return "".join(_escape(char) for char in text)


_NAMED_ESCAPES = {"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(char: str) -> str:
    if char in _NAMED_ESCAPES:
        return _NAMED_ESCAPES[char]
    if char.isprintable():
        return char
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"
