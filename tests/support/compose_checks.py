"""The checks ``scripts/compose-check`` makes on the compose fleet, all through the load
balancer's published port (and the upstream's, for its mode and count): what
``tests/test_fleet_e2e.py`` checks on the native fleet. One step per command, so that
the script runs compose's own commands (``exec``, a kill) between them::

    python -m tests.support.compose_checks --lb URL --upstream URL --admin URL STEP [ARGS]

    trip                   the breaker opens on the fleet's 5th failure, counted together
    state                  redis-cli's HGETALL of the breaker, on stdin: open, 5 failures
    reject GATEWAY...      every worker of every replica answers 503 circuit_open
    reset GATEWAY...       an admin reset on one replica's admin listener closes it for
                           every worker; nginx serves no admin route
    kill -- COMMAND...     COMMAND (a kill of one replica) under load: later requests pass

GATEWAY is a gateway container's id: its hostname, the first part of
``X-Fleetbreaker-Instance``. The admin token is ``BREAKER_ADMIN_TOKEN``'s. Each step
prints what it saw in one line, or the failed check and exits 1. Every loop is bounded
in count and time.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx

from app.proxy.errors import ATTEMPTS_HEADER
from app.server.main import INSTANCE_HEADER
from tests.support import web
from tests.support.load import Load

FLEET_CONFIG = Path(__file__).resolve().parents[2] / "deploy" / "fleet.toml"
UPSTREAM = "demo"  # docker-compose.yml's BREAKER_UPSTREAMS
WORKERS = 2  # per replica: docker-compose.yml's `serve --workers 2`
TRIP_REQUESTS = 10  # the fleet quickstart's loop: twice the threshold
#: The admin listener's routes, which nginx must never answer but with the proxy's 404.
ADMIN_PATHS = ("/admin/breakers", "/dashboard", "/metrics", "/docs")
_SURVEY_ROUNDS = 20  # rounds of concurrent requests to find every worker: a bound
_SURVEY_WIDTH = 12
_LOAD_CLIENTS = 6
_LOAD_BEFORE = 1.0  # seconds of load before the kill
_LOAD_AFTER = 7.0  # and after: past nginx's fail_timeout (5 s) for the dead replica
_TIMEOUT = 30.0


class CheckFailed(Exception):
    """A check did not hold; the message says what was seen."""


def check(holds: bool, seen: str) -> None:
    if not holds:
        raise CheckFailed(seen)


@dataclass(frozen=True)
class Fleet:
    lb: str
    upstream: str
    admin_url: str  # one replica's admin listener, published on the host's loopback
    token: str

    def through_lb(self, path: str) -> httpx.Response:
        """One request through nginx, on a connection of its own (as curl sends it)."""
        with httpx.Client(base_url=self.lb, timeout=_TIMEOUT) as client:
            return client.get(path)

    def admin(self, method: str, path: str) -> httpx.Response:
        return web.request(
            method,
            f"{self.admin_url}{path}",
            headers={"Authorization": f"Bearer {self.token}"},
            timeout=_TIMEOUT,
        )

    def set_mode(self, mode: str, delay: float = 0.0) -> None:
        response = web.put(
            f"{self.upstream}/mode", json={"mode": mode, "delay": delay}, timeout=_TIMEOUT
        )
        response.raise_for_status()

    def hits(self) -> int:
        count: int = web.get(f"{self.upstream}/hits", timeout=_TIMEOUT).json()["hits"]
        return count


def threshold_and_attempts() -> tuple[int, int]:
    """What deploy/fleet.toml, which every replica runs, sets."""
    defaults = tomllib.loads(FLEET_CONFIG.read_text())["defaults"]
    return defaults["breaker"]["failure_threshold"], defaults["retry"]["attempts"]


def host_of(response: httpx.Response) -> str:
    return response.headers[INSTANCE_HEADER].split("/")[0]


def is_circuit_open(response: httpx.Response) -> bool:
    return (
        response.status_code == 503
        and response.headers.get(ATTEMPTS_HEADER) == "0"
        and response.json().get("error") == "circuit_open"
        and int(response.headers.get("retry-after", "0")) >= 1
    )


def survey(fleet: Fleet, gateways: list[str], path: str) -> list[httpx.Response]:
    """Concurrent rounds through nginx until each of ``WORKERS`` workers of every
    gateway has answered ``path``; every answer."""
    hosts = {gateway[:12] for gateway in gateways}  # a container's hostname: its short id
    answers: list[httpx.Response] = []
    seen: dict[str, set[str]] = {}
    with ThreadPoolExecutor(_SURVEY_WIDTH) as pool:
        for _ in range(_SURVEY_ROUNDS):
            for response in pool.map(lambda _: fleet.through_lb(path), range(_SURVEY_WIDTH)):
                answers.append(response)
                seen.setdefault(host_of(response), set()).add(response.headers[INSTANCE_HEADER])
            if all(len(seen.get(host, ())) >= WORKERS for host in hosts):
                return answers
    workers = {host: len(instances) for host, instances in seen.items()}
    raise CheckFailed(
        f"not every worker answered in {_SURVEY_ROUNDS} rounds of {_SURVEY_WIDTH}: "
        f"workers seen by gateway {workers}, gateways {sorted(hosts)}"
    )


# -- the steps ----------------------------------------------------------------------------


def trip(fleet: Fleet) -> str:
    threshold, attempts = threshold_and_attempts()
    fleet.set_mode("failing")
    before = fleet.hits()
    answers = [fleet.through_lb(f"/proxy/{UPSTREAM}/hello") for _ in range(TRIP_REQUESTS)]
    reached = fleet.hits() - before

    check(reached == threshold, f"{reached} requests reached the upstream, not {threshold}")
    by_host: dict[str, int] = {}
    for answer in answers:
        calls = int(answer.headers[ATTEMPTS_HEADER])
        by_host[host_of(answer)] = by_host.get(host_of(answer), 0) + calls
    check(
        sum(by_host.values()) == threshold and max(by_host.values()) < threshold,
        f"upstream calls by gateway {by_host}: not the threshold counted by the fleet together",
    )
    # Each request makes up to `attempts` calls: the first ceil(threshold / attempts)
    # requests reach the upstream, and the breaker rejects every later one.
    reaching = -(-threshold // attempts)
    rejected = answers[reaching:]
    check(
        all(answer.status_code == 503 for answer in answers)
        and all(is_circuit_open(answer) for answer in rejected),
        f"answers {[(a.status_code, a.headers[ATTEMPTS_HEADER]) for a in answers]}",
    )
    return (
        f"open after {threshold} upstream failures over {len(by_host)} gateways "
        f"{sorted(by_host.values())}; the last {len(rejected)} of {TRIP_REQUESTS} "
        "requests rejected"
    )


def state(fleet: Fleet, listing: str) -> str:
    threshold, _ = threshold_and_attempts()
    words = listing.split()
    fields = dict(zip(words[::2], words[1::2], strict=True))
    now_ms = time.time() * 1000  # the containers' clock is this kernel's
    check(fields.get("state") == "open", f"state {fields}")
    check(fields.get("failures") == str(threshold), f"failures {fields}")
    check(0 <= now_ms - int(fields["last_failure_at"]) < 120_000, f"last failure {fields}")
    check(int(fields["open_until"]) > now_ms, f"open_until {fields} is past")
    return f"redis-cli: state open, {threshold} failures, open for another " + (
        f"{(int(fields['open_until']) - now_ms) / 1000:.1f} s"
    )


def reject(fleet: Fleet, gateways: list[str]) -> str:
    before = fleet.hits()
    answers = survey(fleet, gateways, f"/proxy/{UPSTREAM}/hello")
    wrong = [(a.status_code, a.text[:80]) for a in answers if not is_circuit_open(a)]
    check(not wrong, f"answers other than circuit_open: {wrong[:3]}")
    check(fleet.hits() == before, f"{fleet.hits() - before} requests reached the upstream")
    workers = len({a.headers[INSTANCE_HEADER] for a in answers})
    return (
        f"{len(answers)} requests, 503 circuit_open with Retry-After from all {workers} "
        f"workers of {len(gateways)} gateways; none reached the upstream"
    )


def reset(fleet: Fleet, gateways: list[str]) -> str:
    sealed = {path: fleet.through_lb(path).status_code for path in ADMIN_PATHS}
    check(set(sealed.values()) == {404}, f"nginx answers the admin listener's routes: {sealed}")
    fleet.set_mode("healthy")
    response = fleet.admin("POST", f"/admin/breakers/{UPSTREAM}/reset")
    check(response.status_code == 200, f"reset: {response.status_code} {response.text}")
    answers = survey(fleet, gateways, f"/proxy/{UPSTREAM}/hello")
    wrong = [(a.status_code, a.text[:80]) for a in answers if a.status_code != 200]
    check(not wrong, f"answers after the reset other than 200: {wrong[:3]}")
    closed = fleet.admin("GET", f"/admin/breakers/{UPSTREAM}").json()["state"]
    check(closed == "closed", f"state after the reset: {closed}")
    return (
        f"reset on one replica's admin listener: {len(answers)} requests through nginx, "
        f"200 from every worker; nginx answers 404 to {', '.join(ADMIN_PATHS)}"
    )


def kill(fleet: Fleet, command: list[str]) -> str:
    fleet.set_mode("slow", delay=0.02)  # every replica has requests in flight
    load = Load(
        [f"{fleet.lb}/proxy/{UPSTREAM}/item"],
        clients=_LOAD_CLIENTS,
        max_requests=_LOAD_CLIENTS * 2000,
        max_seconds=_LOAD_BEFORE + _LOAD_AFTER + 30.0,
        keep_alive=True,
    ).start()
    try:
        time.sleep(_LOAD_BEFORE)
        # The kill takes effect at some moment while the command runs.
        kill_started = time.monotonic()
        subprocess.run(command, check=True, timeout=_TIMEOUT, stdout=subprocess.DEVNULL)
        kill_returned = time.monotonic()
        time.sleep(max(0.0, kill_returned + _LOAD_AFTER - time.monotonic()))
    finally:
        sent = load.stop()
    fleet.set_mode("healthy")

    after = [s for s in sent if s.started > kill_returned]
    at_kill = [s for s in sent if s.started < kill_returned and s.ended > kill_started]
    errors = [s for s in sent if s.status != 200]
    check(len(after) > 50, f"the load stopped: {len(after)} requests after the kill")
    failed_after = [
        (s.label, f"+{s.started - kill_returned:.3f} s") for s in after if s.status != 200
    ]
    check(not failed_after, f"requests sent after the kill failed: {failed_after}")
    check(
        all(s in at_kill for s in errors),
        f"errors before the kill: {sorted({s.label for s in errors if s not in at_kill})}",
    )
    slowest = max(s.took for s in after)
    failed = f"{len(errors)} failed {sorted({s.label for s in errors})}" if errors else "0 failed"
    return (
        f"{' '.join(command)} under load: {len(sent)} requests, {len(at_kill)} in flight "
        f"during the kill ({kill_returned - kill_started:.2f} s), {failed}; all "
        f"{len(after)} sent after it got 200 (slowest {slowest:.2f} s)"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.support.compose_checks")
    parser.add_argument("--lb", required=True, help="the load balancer's URL")
    parser.add_argument("--upstream", required=True, help="the demo upstream's URL")
    parser.add_argument("--admin", required=True, help="a replica's admin listener's URL")
    steps = parser.add_subparsers(dest="step", required=True)
    steps.add_parser("trip")
    steps.add_parser("state")
    for name in ("reject", "reset"):
        steps.add_parser(name).add_argument("gateways", nargs="+")
    steps.add_parser("kill").add_argument("command", nargs="+")
    args = parser.parse_args(argv)

    fleet = Fleet(args.lb, args.upstream, args.admin, os.environ.get("BREAKER_ADMIN_TOKEN", ""))
    run: dict[str, Callable[[], str]] = {
        "trip": lambda: trip(fleet),
        "state": lambda: state(fleet, sys.stdin.read()),
        "reject": lambda: reject(fleet, args.gateways),
        "reset": lambda: reset(fleet, args.gateways),
        "kill": lambda: kill(fleet, args.command),
    }
    try:
        print(f"compose-check: {args.step}: {run[args.step]()}", flush=True)
    except (CheckFailed, httpx.HTTPError, KeyError, ValueError) as exc:
        print(f"compose-check: {args.step} FAILED: {exc!r}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
