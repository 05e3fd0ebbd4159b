"""``fleetbreaker``: serve the gateway, and inspect or control breakers in Redis.

Exit codes (``exits``): 0 done; 1 Redis could not be reached; 2 bad usage or
configuration; 3 the server did not start. Errors are one line on stderr, never a
traceback.

The commands that talk to Redis (``status``, ``reset``, ``open``, ``disable``,
``watch``) need only the library: the gateway's stack (FastAPI, pydantic-settings,
uvicorn, ...) is imported inside the commands that run the gateway (``serving``) or
read its configuration, so that ``pip install
fleetbreaker`` without the ``gateway`` extra gets them, and a one-line hint from the
others.

What Redis says (breaker names, states, the reasons of transitions; anyone who may
write a key or PUBLISH can choose them) and every error line are printed through
``terminal.shown``: a terminal never sees their control characters, only escapes of them.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from breaker import __version__

from . import breakers, serving
from . import watch as watching
from .exits import EXIT_OK, CommandError
from .terminal import shown
from .watch import FAILOVER_WAIT, RESCAN_EVERY


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
    serve.set_defaults(run=serving.serve)

    upstream = command("demo-upstream", "run the flaky demo upstream on its own (one process)")
    upstream.add_argument("--host", default="127.0.0.1", help="the address to listen on")
    upstream.add_argument("--port", type=int, default=9000, help="the port to listen on")
    upstream.set_defaults(run=serving.demo_upstream)

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
    fleet.set_defaults(run=serving.fleet)

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
    status.set_defaults(run=breakers.status)
    for name, action, text in (
        ("reset", "reset", "close a breaker and clear its counters, fleet-wide"),
        ("open", "force_open", "force a breaker open, fleet-wide, until a reset"),
        ("disable", "disable", "let every call through (still counted) until a reset"),
    ):
        control = with_redis(command(name, text))
        control.add_argument("name", help="the breaker's name: its upstream's")
        control.set_defaults(run=breakers.control, action=action)
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
    watch.set_defaults(run=watching.watch)
    return parser
