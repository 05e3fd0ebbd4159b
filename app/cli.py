"""``fleetbreaker``: serve the gateway, and inspect or control breakers in Redis.

Exit codes: 0 done; 1 Redis could not be reached; 2 bad usage, bad configuration
or an unknown breaker. Errors are one line on stderr, never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import secrets
import shutil
import signal
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import redis

from breaker import (
    BackendUnavailableError,
    BreakerOperator,
    BreakerSnapshot,
    TransitionEvent,
    events_channel,
)

from .settings import DEMO_UPSTREAM, ConfigError, GatewayConfig, load_config, redacted_url

EXIT_OK = 0
EXIT_UNREACHABLE = 1
EXIT_USAGE = 2
#: This package's import name: ``fleetbreaker`` when installed, ``app`` in a checkout.
#: uvicorn's import strings name it, so that a worker imports this very gateway.
PACKAGE = __name__.rpartition(".")[0]


class CommandError(Exception):
    def __init__(self, message: str, code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.code = code


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.run(args)
    except CommandError as exc:
        print(f"fleetbreaker: {exc}", file=sys.stderr)
        return exc.code
    except ConfigError as exc:
        print(f"fleetbreaker: invalid configuration: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_OK
    return code


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fleetbreaker", description="A circuit breaker and retry gateway, shared via Redis."
    )
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the gateway (uvicorn)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--workers", type=int, default=1)
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning"])
    serve.add_argument("--access-log", action="store_true", help="log every request")
    serve.set_defaults(run=_serve)

    upstream = commands.add_parser(
        "demo-upstream", help="run the flaky demo upstream on its own (one process)"
    )
    upstream.add_argument("--host", default="127.0.0.1")
    upstream.add_argument("--port", type=int, default=9000)
    upstream.set_defaults(run=_demo_upstream)

    fleet = commands.add_parser(
        "fleet", help="run docker-compose.yml's topology as local processes (needs nginx)"
    )
    fleet.add_argument("--replicas", type=int, default=3)
    fleet.add_argument("--workers", type=int, default=2, help="per replica")
    fleet.add_argument("--port", type=int, default=8080, help="nginx's port")
    fleet.add_argument("--upstream-port", type=int, default=9000, help="the demo upstream's")
    fleet.set_defaults(run=_fleet)

    def with_redis(command: argparse.ArgumentParser) -> argparse.ArgumentParser:
        command.add_argument(
            "--redis-url",
            default=os.environ.get("BREAKER_REDIS_URL"),
            help="default: $BREAKER_REDIS_URL",
        )
        return command

    status = with_redis(commands.add_parser("status", help="every breaker, read from Redis"))
    status.add_argument("--json", action="store_true", help="one JSON object per breaker")
    status.set_defaults(run=_status)
    for name, action, text in (
        ("reset", "reset", "close a breaker and clear its counters, fleet-wide"),
        ("open", "force_open", "force a breaker open, fleet-wide, until a reset"),
        ("disable", "disable", "let every call through (still counted) until a reset"),
    ):
        command = with_redis(commands.add_parser(name, help=text))
        command.add_argument("name")
        command.set_defaults(run=_control, action=action)
    watch = with_redis(commands.add_parser("watch", help="print transitions as they happen"))
    watch.set_defaults(run=_watch)
    return parser


# -- serve ----------------------------------------------------------------------------


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from .logs import log_config

    if args.workers < 1:
        raise CommandError("--workers must be at least 1")
    everywhere = args.host in ("0.0.0.0", "::", "")  # noqa: S104 - recognising it, not binding  # nosec B104
    host_for_urls = "127.0.0.1" if everywhere else args.host
    os.environ.setdefault("BREAKER_PUBLIC_URL", f"http://{host_for_urls}:{args.port}")
    config = load_config()  # refuse a bad configuration here, once, not in each worker
    if config.demo and config.admin_token is None:
        token = secrets.token_urlsafe(18)
        os.environ["BREAKER_ADMIN_TOKEN"] = token
        config = load_config()
    if config.redis_url is None and args.workers > 1:
        print(
            "fleetbreaker: warning: no BREAKER_REDIS_URL, so each of the "
            f"{args.workers} workers keeps breakers of its own",
            file=sys.stderr,
        )
    if config.demo:
        print(_demo_banner(config, os.environ["BREAKER_PUBLIC_URL"]), flush=True)
    with _metrics_folder(args.workers):
        uvicorn.run(
            f"{PACKAGE}.main:create_app",
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
        )
    return EXIT_OK


def _demo_upstream(args: argparse.Namespace) -> int:
    import uvicorn

    from .logs import log_config

    uvicorn.run(
        f"{PACKAGE}.demo:create_demo_upstream",
        factory=True,
        host=args.host,
        port=args.port,
        log_config=log_config("warning"),
        timeout_graceful_shutdown=5,
    )
    return EXIT_OK


# -- fleet ------------------------------------------------------------------------------


def _fleet(args: argparse.Namespace) -> int:
    from .fleet import Fleet, FleetError

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
def _metrics_folder(workers: int) -> Iterator[None]:
    """Several workers: prometheus-client's multiprocess mode, in a folder of our own."""
    if workers == 1 or os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        yield
        return
    folder = tempfile.mkdtemp(prefix="fleetbreaker-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = folder
    try:
        yield
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _demo_banner(config: GatewayConfig, public_url: str) -> str:
    token = config.admin_token
    base = public_url.rstrip("/")
    demo = config.upstreams[DEMO_UPSTREAM].breaker
    assert demo is not None  # the demo upstream always has its breaker
    threshold = demo.failure_threshold
    return "\n".join(
        [
            "",
            f"fleetbreaker demo: gateway on {base}, upstream 'demo' served at {base}/demo",
            f"({config.backend} backend; admin token for this run: {token})",
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
            f"   curl -s -H 'Authorization: Bearer {token}' {base}/admin/breakers/demo",
            "",
        ]
    )


# -- Redis commands ---------------------------------------------------------------------


def _client(args: argparse.Namespace) -> redis.Redis:
    if not args.redis_url:
        raise CommandError("no Redis to talk to: pass --redis-url or set BREAKER_REDIS_URL")
    try:
        client = redis.Redis.from_url(args.redis_url, socket_timeout=5, socket_connect_timeout=5)
        client.ping()
    except ValueError as exc:
        raise CommandError(f"--redis-url: {exc}") from None
    except (redis.RedisError, OSError) as exc:
        raise CommandError(
            f"cannot reach Redis at {redacted_url(args.redis_url)}: {exc}", EXIT_UNREACHABLE
        ) from None
    return client


def _configured(redis_url: str) -> tuple[str, list[str]]:
    """The key prefix, and the names of the configured upstreams with a breaker."""
    environ = {**os.environ, "BREAKER_REDIS_URL": redis_url}
    if not environ.get("BREAKER_CONFIG") and not environ.get("BREAKER_UPSTREAMS"):
        return "breaker", []
    config = load_config(environ)
    return config.prefix, [name for name, up in config.upstreams.items() if up.breaker]


@contextlib.contextmanager
def _operator(args: argparse.Namespace) -> Iterator[tuple[BreakerOperator, list[str]]]:
    """The operator for ``--redis-url``, and every breaker name it knows of: those in
    Redis and the configured ones. It acts with each breaker's stored settings."""
    client = _client(args)
    prefix, configured = _configured(args.redis_url)
    with BreakerOperator(client, prefix=prefix) as operator:
        names = _unreachable_guard(operator.names)
        yield operator, sorted(set(configured) | set(names))
    client.close()


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
            s.name,
            s.state,
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
            raise CommandError(f"no breaker named {args.name!r} (known: {known})")
        _unreachable_guard(lambda: operator.control(args.name, args.action))
        snapshot = _unreachable_guard(lambda: operator.snapshot(args.name))
    print(f"{snapshot.name}: {snapshot.state}")
    return EXIT_OK


def _unreachable_guard(operation: Callable[[], Any]) -> Any:
    try:
        return operation()
    except BackendUnavailableError as exc:
        raise CommandError(f"Redis did not answer: {exc.reason}", EXIT_UNREACHABLE) from None


def _interrupted(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _stop_on_signals() -> None:
    """Ctrl-C and SIGTERM end a long-running command cleanly: also when it was started
    with SIGINT ignored, which a process inherits from a background job or nohup (a
    ``watch`` started so never heard Ctrl-C, and its test waited for it in vain)."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _interrupted)


def _watch(args: argparse.Namespace) -> int:
    _stop_on_signals()
    client = _client(args)
    prefix, _ = _configured(args.redis_url)
    pubsub = client.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
    pubsub.subscribe(events_channel(prefix))
    print(f"watching {events_channel(prefix)} (Ctrl-C to stop)", file=sys.stderr, flush=True)
    try:
        while True:
            try:
                message = pubsub.get_message(timeout=1.0)
            except (redis.RedisError, OSError) as exc:
                raise CommandError(f"lost Redis: {exc}", EXIT_UNREACHABLE) from None
            if message is None or message["type"] != "message":
                continue
            event = TransitionEvent.from_json(message["data"])
            if event is not None:
                print(
                    f"{event.at} {event.name}: {event.from_state} -> {event.to_state} "
                    f"({event.reason})",
                    flush=True,
                )
    finally:
        pubsub.close()
