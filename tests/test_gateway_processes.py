"""``fleetbreaker serve --workers 2`` as a real process on a real Redis: the two workers
share one breaker, both serve the admin listener, every admin action reaches the
other worker on its next request, ``/metrics`` sums both, the live event stream
carries the fleet's transitions, and a stop with streams open is prompt and clean.

Every request opens a new connection, so the kernel spreads them over the workers;
``X-Fleetbreaker-Instance`` says which worker answered. Loops are bounded.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.gateway import AUTH, TOKEN
from tests.support.gateway_process import GatewayProcess
from tests.support.servers import RedisServer
from tests.support.upstream import Reply, Upstream

# One worker holds the module's gateway; the tests on it run there, one after another.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("gateway_processes")]

THRESHOLD = 4
_MAX_REQUESTS = 200  # a bound on looking for the other worker, never reached in practice


#: One upstream (and so one breaker) per test on the module's gateway: a test's trips,
#: resets and log lines are its own.
_NAMES = [f"api{index}" for index in range(12)]


@pytest.fixture(scope="module")
def gateway(
    tmp_path_factory: pytest.TempPathFactory, _upstream_server: Upstream
) -> Iterator[GatewayProcess]:
    """One 2-worker gateway and its own redis-server for the module: starting one
    costs seconds, and every test here drives a breaker of its own on it."""
    workdir = tmp_path_factory.mktemp("gateway")
    redis_server = RedisServer(workdir)
    redis_server.start()
    config = workdir / "fleetbreaker.toml"
    upstreams = "".join(
        f"""
        [upstreams.{name}]
        url = "{_upstream_server.url}"
        breaker = {{ failure_threshold = {THRESHOLD}, reset_timeout = 300 }}
        retry = {{ attempts = 1 }}
        """
        for name in _NAMES
    )
    config.write_text(f"[gateway]\nexpose_instance = true\n{upstreams}")
    process = GatewayProcess(
        workdir,
        {
            "BREAKER_REDIS_URL": redis_server.url,
            "BREAKER_CONFIG": str(config),
            "BREAKER_ADMIN_TOKEN": TOKEN,
        },
        workers=2,
    )
    try:
        process.start()
        yield process
    finally:
        process.stop()
        redis_server.stop()


_unused = iter(_NAMES)


@pytest.fixture
def api(gateway: GatewayProcess) -> str:
    """The name of an upstream of the module's gateway no other test has touched."""
    return next(_unused)


def fresh(url: str, method: str, path: str, **kwargs: object) -> httpx.Response:
    """One request to the listener at ``url``, on a new connection (so that either
    worker may take it)."""
    with httpx.Client(base_url=url, timeout=10.0) as client:
        return client.request(method, path, **kwargs)  # type: ignore[arg-type]


def until_both_workers(url: str, path: str) -> dict[str, list[httpx.Response]]:
    """Send GET ``path`` to the listener at ``url`` until both workers have answered;
    the answers by worker."""
    by_worker: dict[str, list[httpx.Response]] = {}
    for _ in range(_MAX_REQUESTS):
        response = fresh(url, "GET", path)
        by_worker.setdefault(response.headers["x-fleetbreaker-instance"], []).append(response)
        if len(by_worker) == 2:
            return by_worker
    raise AssertionError(f"one worker answered all {_MAX_REQUESTS} requests")


def test_two_workers_trip_on_the_threshold_counted_together(
    gateway: GatewayProcess, upstream: Upstream, api: str
) -> None:
    upstream.plan("/down", Reply(500))
    failed_on = [fresh(gateway.url, "GET", f"/proxy/{api}/down") for _ in range(THRESHOLD)]
    assert [r.status_code for r in failed_on] == [500] * THRESHOLD
    answers = until_both_workers(gateway.url, f"/proxy/{api}/down")
    for responses in answers.values():
        for response in responses:
            assert response.status_code == 503
            assert response.json()["error"] == "circuit_open"
            assert int(response.headers["retry-after"]) > 0
    # Per-worker breakers would have let one worker, or both, keep calling.
    assert len(upstream.hits_on("/down")) == THRESHOLD


def test_each_admin_action_reaches_the_other_worker_on_its_next_request(
    gateway: GatewayProcess, upstream: Upstream, api: str
) -> None:
    upstream.plan("/x", Reply(500))
    for _ in range(THRESHOLD):
        fresh(gateway.url, "GET", f"/proxy/{api}/x")
    until_both_workers(gateway.url, f"/proxy/{api}/x")  # both hold the open view now
    upstream.plan("/x", Reply(200))

    reset = fresh(gateway.admin_url, "POST", f"/admin/breakers/{api}/reset", headers=AUTH)
    assert reset.json()["state"] == "closed"
    for responses in until_both_workers(gateway.url, f"/proxy/{api}/x").values():
        assert [r.status_code for r in responses] == [200] * len(responses)

    forced = fresh(gateway.admin_url, "POST", f"/admin/breakers/{api}/open", headers=AUTH)
    assert forced.json()["state"] == "forced_open"
    hits = len(upstream.hits_on("/x"))
    for responses in until_both_workers(gateway.url, f"/proxy/{api}/x").values():
        assert [r.status_code for r in responses] == [503] * len(responses)
    assert len(upstream.hits_on("/x")) == hits

    upstream.plan("/x", Reply(500))
    disabled = fresh(gateway.admin_url, "POST", f"/admin/breakers/{api}/disable", headers=AUTH)
    assert disabled.json()["state"] == "disabled"
    seen = until_both_workers(gateway.url, f"/proxy/{api}/x")
    sent = sum(len(responses) for responses in seen.values())
    for responses in seen.values():
        assert [r.status_code for r in responses] == [500] * len(responses)
    assert len(upstream.hits_on("/x")) == hits + sent


def test_metrics_sum_both_workers(gateway: GatewayProcess, upstream: Upstream, api: str) -> None:
    answers = until_both_workers(gateway.url, f"/proxy/{api}/m")
    sent = sum(len(responses) for responses in answers.values())
    text = fresh(gateway.admin_url, "GET", "/metrics").text
    [line] = [
        line
        for line in text.splitlines()
        if line.startswith("fleetbreaker_calls_total{")
        and 'outcome="success"' in line
        and f'upstream="{api}"' in line
    ]
    assert float(line.rpartition(" ")[2]) == sent


def test_both_workers_serve_the_admin_listener(gateway: GatewayProcess) -> None:
    """Each worker binds the admin port (SO_REUSEPORT): the kernel spreads the admin
    connections over both, as it spreads the proxy's."""
    answers = until_both_workers(gateway.admin_url, "/healthz")
    assert all(r.status_code == 200 for responses in answers.values() for r in responses)


def test_every_answered_request_is_recorded_by_the_breaker(
    gateway: GatewayProcess, upstream: Upstream, api: str
) -> None:
    # Each client closes as soon as it has the body: uvicorn then cancels the rest of
    # the response, and the breaker must still record the success.
    for _ in range(30):
        assert fresh(gateway.url, "GET", f"/proxy/{api}/r").status_code == 200
    # Successes are batched (the gateway's default): each worker flushes its own
    # within 50 ms and a poll of its events follower.
    deadline = time.monotonic() + 5.0
    view = fresh(gateway.admin_url, "GET", f"/admin/breakers/{api}", headers=AUTH).json()
    while view["window_calls"] < 30 and time.monotonic() < deadline:
        time.sleep(0.02)
        view = fresh(gateway.admin_url, "GET", f"/admin/breakers/{api}", headers=AUTH).json()
    assert (view["window_calls"], view["failures"]) == (30, 0)


def test_event_stream_carries_transitions_made_by_either_worker(
    gateway: GatewayProcess, upstream: Upstream, api: str
) -> None:
    events: list[dict[str, object]] = []
    subscribed = threading.Event()
    heard_reset = threading.Event()

    def follow() -> None:
        with (
            httpx.Client(base_url=gateway.admin_url, timeout=httpx.Timeout(30.0)) as client,
            client.stream("GET", "/admin/events", headers=AUTH) as stream,
        ):
            assert stream.headers["content-type"].startswith("text/event-stream")
            for line in stream.iter_lines():
                if line.startswith(":"):
                    subscribed.set()
                elif line.startswith("data: "):
                    event = json.loads(line[len("data: ") :])
                    if event["name"] != api:  # another test's breaker
                        continue
                    events.append(event)
                    if events[-1]["reason"] == "reset":
                        heard_reset.set()
                        return

    reader = threading.Thread(target=follow, daemon=True)
    reader.start()
    assert subscribed.wait(10.0)
    upstream.plan("/e", Reply(500))
    for _ in range(THRESHOLD):
        fresh(gateway.url, "GET", f"/proxy/{api}/e")
    fresh(gateway.admin_url, "POST", f"/admin/breakers/{api}/reset", headers=AUTH)
    assert heard_reset.wait(10.0)
    assert [(e["from"], e["to"], e["reason"]) for e in events] == [
        ("closed", "open", "failure_threshold"),
        ("open", "closed", "reset"),
    ]
    reader.join(10.0)


def test_one_transition_is_logged_once_by_the_fleet(
    gateway: GatewayProcess, upstream: Upstream, api: str
) -> None:
    upstream.plan("/l", Reply(500))
    for _ in range(THRESHOLD):
        fresh(gateway.url, "GET", f"/proxy/{api}/l")
    until_both_workers(gateway.url, f"/proxy/{api}/l")
    deadline = time.monotonic() + 5.0
    lines: list[dict[str, object]] = []
    while time.monotonic() < deadline:
        lines = [
            json.loads(line)
            for line in gateway.log().splitlines()
            if line.startswith("{")
            and '"event": "transition"' in line
            and json.loads(line)["upstream"] == api
        ]
        if lines:
            break
        time.sleep(0.05)
    assert [(line["from"], line["to"]) for line in lines] == [("closed", "open")]
    rejected = [
        json.loads(line)
        for line in gateway.log().splitlines()
        if line.startswith("{")
        and '"event": "rejected"' in line
        and json.loads(line)["upstream"] == api
    ]
    assert len({line["pid"] for line in rejected}) == 2
    assert TOKEN not in gateway.log()


def test_x_forwarded_for_gains_the_peer_that_sent_the_request(
    gateway: GatewayProcess, upstream: Upstream, api: str
) -> None:
    """Behind a load balancer the peer is the balancer, and the client it names is
    already in the header: the gateway appends its peer, never the named client again."""
    upstream.plan("/who", Reply(200))
    fresh(gateway.url, "GET", f"/proxy/{api}/who", headers={"X-Forwarded-For": "203.0.113.9"})
    [hit] = upstream.hits_on("/who")
    assert hit.headers["x-forwarded-for"] == "203.0.113.9, 127.0.0.1"


def test_a_stop_with_event_streams_open_is_prompt_and_leaves_nothing_unclosed(
    tmp_path: Path, redis_server: RedisServer, upstream: Upstream
) -> None:
    """The admin listener stops with the worker: the event streams end (their clients
    see the end of the body, not a reset), both sockets close, no task is left."""
    process = GatewayProcess(
        tmp_path,
        {
            "BREAKER_REDIS_URL": redis_server.url,
            "BREAKER_UPSTREAMS": f"api={upstream.url}",
            "BREAKER_ADMIN_TOKEN": TOKEN,
            "PYTHONWARNINGS": "always::ResourceWarning",  # unclosed sockets say so
        },
        workers=2,
    )
    process.start()
    ended: list[str] = []
    following = threading.Barrier(_STREAMS + 1, timeout=10.0)

    def follow(path: str, headers: dict[str, str]) -> None:
        with (
            httpx.Client(base_url=process.admin_url, timeout=30.0) as client,
            client.stream("GET", path, headers=headers) as stream,
        ):
            lines = stream.iter_lines()
            next(lines)  # the opening comment: the stream is open
            following.wait()
            for _ in lines:
                pass
        ended.append(path)

    readers = [
        threading.Thread(target=follow, args=(path, headers), daemon=True)
        for path, headers in [("/admin/events", AUTH), ("/dashboard/events", {})] * 2
    ]
    try:
        for reader in readers:
            reader.start()
        following.wait()
        stopping = time.monotonic()
        assert process.stop() == 0
        took = time.monotonic() - stopping
        for reader in readers:
            reader.join(10.0)
    finally:
        process.stop()
    log = process.log()
    assert sorted(ended) == ["/admin/events"] * 2 + ["/dashboard/events"] * 2
    # The streams did not hold the stop to the graceful shutdown's time-out: uvicorn
    # logs "timeout graceful shutdown exceeded" when it does (checked below). The time
    # itself is only bounded loosely: on a loaded machine two workers take seconds.
    assert took < 15.0, f"the stop took {took:.1f} s"
    for trouble in ("Traceback", "Task was destroyed", "never awaited", "graceful shutdown"):
        assert trouble not in log, log
    assert unclosed(log, process.port) == [], log


_STREAMS = 4


def unclosed(log: str, port: int) -> list[str]:
    """The ResourceWarnings in ``log``, but one: uvicorn's main process binds the
    proxy's socket for its workers and leaves it to the end of the process (see
    ``test_fastapi_example_processes.unclosed``)."""
    proxy_socket = re.compile(rf"unclosed <socket\.socket .*laddr=\('127\.0\.0\.1', {port}\)>$")
    return [
        line
        for line in log.splitlines()
        if "ResourceWarning" in line
        and not proxy_socket.search(line)
        and "Enable tracemalloc" not in line
    ]
