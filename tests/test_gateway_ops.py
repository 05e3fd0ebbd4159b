"""Liveness, readiness, metrics, the OpenAPI document and the demo upstream; which
listener answers each (the proxy's: ``/proxy``, ``/healthz``, a status-only
``/readyz``; the admin listener: the rest, and ``/readyz`` in detail with the token)."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import httpx

from app import GatewayConfig
from breaker.testing import ManualClock
from tests.support.gateway import (
    ADMIN,
    AUTH,
    Scenario,
    config_for,
    gateway_config,
    metric,
    run_with_gateway,
)
from tests.support.servers import RedisServer
from tests.support.upstream import Reply, Upstream


def run(config: GatewayConfig, scenario: Scenario) -> None:
    run_with_gateway(config, scenario, ManualClock())


def test_healthz_is_ok_on_either_listener(tmp_path: Path) -> None:
    async def scenario(client: httpx.AsyncClient) -> None:
        for url in ("/healthz", f"{ADMIN}/healthz"):
            response = await client.get(url)
            assert (response.status_code, response.json()) == (200, {"status": "ok"})

    run(gateway_config(tmp_path), scenario)


def test_readyz_on_the_embedded_backend(tmp_path: Path) -> None:
    async def scenario(client: httpx.AsyncClient) -> None:
        response = await client.get(f"{ADMIN}/readyz", headers=AUTH)
        assert (response.status_code, response.json()) == (
            200,
            {"status": "ready", "backend": "embedded"},
        )

    run(gateway_config(tmp_path), scenario)


def test_readyz_with_redis_up_then_down(tmp_path: Path, redis_server: RedisServer) -> None:
    config = gateway_config(tmp_path, redis_url=redis_server.url, upstreams="api=http://h")

    async def scenario(client: httpx.AsyncClient) -> None:
        ready = await client.get(f"{ADMIN}/readyz", headers=AUTH)
        assert ready.json() == {
            "status": "ready",
            "backend": "redis",
            "topology": "standalone",
            "redis": {"server": f"127.0.0.1:{redis_server.port}"},
        }
        redis_server.kill()
        degraded = await client.get(f"{ADMIN}/readyz", headers=AUTH)
        assert degraded.status_code == 200
        assert degraded.json()["status"] == "degraded"
        assert degraded.json()["backend"] == "fallback"

    run(config, scenario)


def test_readyz_tells_anyone_its_status_and_only_an_admin_what_it_sees_of_redis(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """The address of Redis and its error text (``invalid username-password pair``)
    are an admin's to read: on the admin listener, with the token. The proxy's
    listener, the one a load balancer exposes, answers the status alone, always."""
    config = gateway_config(tmp_path, redis_url=redis_server.url, upstreams="api=http://h")

    async def scenario(client: httpx.AsyncClient) -> None:
        redis_server.kill()
        for url, headers in [
            ("/readyz", {}),
            ("/readyz", AUTH),  # never more on the proxy's listener
            (f"{ADMIN}/readyz", {}),
        ]:
            answer = await client.get(url, headers=headers)
            assert (answer.status_code, answer.json()) == (200, {"status": "degraded"}), url
        detailed = (await client.get(f"{ADMIN}/readyz", headers=AUTH)).json()
        assert detailed["redis"] == {"server": f"127.0.0.1:{redis_server.port}"}
        assert detailed["detail"].startswith("Redis unreachable: Error 111")

    run(config, scenario)


def test_readyz_details_refuse_a_wrong_token(tmp_path: Path) -> None:
    async def scenario(client: httpx.AsyncClient) -> None:
        wrong = await client.get(f"{ADMIN}/readyz", headers={"Authorization": "Bearer nope"})
        assert (wrong.status_code, wrong.json()["error"]) == (401, "unauthorized")
        in_url = await client.get(f"{ADMIN}/readyz?token=x")
        assert (in_url.status_code, in_url.json()["error"]) == (400, "bad_request")

    run(gateway_config(tmp_path), scenario)


def test_readyz_is_503_when_every_upstream_is_fail_closed(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    config = gateway_config(
        tmp_path,
        """
        [defaults.breaker]
        on_backend_error = "fail_closed"
        [upstreams.api]
        url = "http://h"
        """,
        redis_url=redis_server.url,
    )

    async def scenario(client: httpx.AsyncClient) -> None:
        redis_server.kill()
        for url in ("/readyz", f"{ADMIN}/readyz"):  # the status, on either listener
            response = await client.get(url)
            assert (response.status_code, response.json()) == (503, {"status": "unavailable"})

    run(config, scenario)


def test_fail_closed_upstream_answers_503_backend_unavailable_while_redis_is_dead(
    tmp_path: Path, redis_server: RedisServer, upstream: Upstream
) -> None:
    config = gateway_config(
        tmp_path,
        f"""
        [upstreams.api]
        url = "{upstream.url}"
        breaker = {{ on_backend_error = "fail_closed" }}
        """,
        redis_url=redis_server.url,
    )

    async def scenario(client: httpx.AsyncClient) -> None:
        redis_server.kill()
        response = await client.get("/proxy/api/x")
        assert response.status_code == 503
        assert response.json()["error"] == "backend_unavailable"

    run(config, scenario)
    assert upstream.hits == []


def test_metrics_count_calls_retries_transitions_and_read_the_state(
    tmp_path: Path, upstream: Upstream, backend: str | None
) -> None:
    upstream.plan("/base/flaky", Reply(503), Reply(200))
    upstream.plan("/base/down", Reply(500))

    async def scenario(client: httpx.AsyncClient) -> None:
        before = (await client.get(f"{ADMIN}/metrics")).text

        def grown(text: str, name: str, **labels: str) -> float:
            try:
                start = metric(before, name, **labels)
            except AssertionError:
                start = 0.0
            return metric(text, name, **labels) - start

        await client.get("/proxy/api/flaky")  # 503, retried, 200
        for _ in range(3):
            await client.get("/proxy/api/down")  # 3 failures: opens
        await client.get("/proxy/api/down")  # rejected
        response = await client.get(f"{ADMIN}/metrics")
        assert response.headers["content-type"].startswith("text/plain")
        text = response.text
        assert grown(text, "fleetbreaker_calls_total", upstream="api", outcome="success") == 1
        assert grown(text, "fleetbreaker_calls_total", upstream="api", outcome="failure") == 4
        assert grown(text, "fleetbreaker_calls_total", upstream="api", outcome="rejected") == 1
        assert grown(text, "fleetbreaker_retries_total", upstream="api") == 1
        assert grown(text, "fleetbreaker_retry_successes_total", upstream="api") == 1
        assert grown(text, "fleetbreaker_request_attempts_count", upstream="api") == 5
        assert grown(text, "fleetbreaker_request_attempts_sum", upstream="api") == 5
        labels = {"upstream": "api", "outcome": "failure"}
        assert grown(text, "fleetbreaker_call_duration_seconds_count", **labels) == 4
        assert (
            grown(
                text,
                "fleetbreaker_transitions_total",
                upstream="api",
                from_state="closed",
                to_state="open",
            )
            == 1
        )
        assert grown(text, "fleetbreaker_requests_total", upstream="api", result="2xx") == 1
        assert (
            grown(text, "fleetbreaker_requests_total", upstream="api", result="circuit_open") == 1
        )
        assert grown(text, "fleetbreaker_upstream_latency_seconds_count", upstream="api") == 5
        assert metric(text, "fleetbreaker_breaker_state", upstream="api", state="open") == 1
        assert metric(text, "fleetbreaker_breaker_state", upstream="api", state="closed") == 0
        assert metric(text, "fleetbreaker_breaker_consecutive_failures", upstream="api") == 3
        assert metric(text, "fleetbreaker_backend_up") == 1

    run(config_for(tmp_path, upstream, backend), scenario)


def test_metrics_count_budget_refusals(tmp_path: Path, upstream: Upstream) -> None:
    upstream.plan("/base/down", Reply(503))
    extra = "retry = { attempts = 3, budget = { ratio = 0, min_retries_per_second = 0 } }"

    async def scenario(client: httpx.AsyncClient) -> None:
        before = (await client.get(f"{ADMIN}/metrics")).text
        labels = {"upstream": "api", "reason": "budget"}
        try:
            start = metric(before, "fleetbreaker_retries_refused_total", **labels)
        except AssertionError:
            start = 0.0
        assert (await client.get("/proxy/api/down")).headers["x-fleetbreaker-attempts"] == "1"
        text = (await client.get(f"{ADMIN}/metrics")).text
        assert metric(text, "fleetbreaker_retries_refused_total", **labels) - start == 1

    run(config_for(tmp_path, upstream, None, extra), scenario)


def test_metrics_count_backend_errors_and_say_redis_is_down(
    tmp_path: Path, redis_server: RedisServer, upstream: Upstream
) -> None:
    config = gateway_config(tmp_path, redis_url=redis_server.url, upstreams=f"api={upstream.url}")

    async def scenario(client: httpx.AsyncClient) -> None:
        before = metric(
            (await client.get(f"{ADMIN}/metrics")).text, "fleetbreaker_backend_errors_total"
        )
        redis_server.kill()
        assert (await client.get("/proxy/api/x")).status_code == 200  # fail_open: served
        text = (await client.get(f"{ADMIN}/metrics")).text
        assert metric(text, "fleetbreaker_backend_errors_total") > before
        assert metric(text, "fleetbreaker_backend_up") == 0

    run(config, scenario)


def test_openapi_lists_every_route_of_both_listeners_with_its_error_bodies(
    tmp_path: Path,
) -> None:
    async def scenario(client: httpx.AsyncClient) -> None:
        document = (await client.get(f"{ADMIN}/openapi.json")).json()
        paths = document["paths"]
        assert set(paths) == {
            "/proxy/{upstream}/{path}",
            "/proxy/{upstream}",
            "/admin/breakers",
            "/admin/breakers/{name}",
            "/admin/breakers/{name}/reset",
            "/admin/breakers/{name}/open",
            "/admin/breakers/{name}/disable",
            "/admin/events",
            "/healthz",
            "/readyz",
            "/metrics",
            "/dashboard/fleet",
            "/dashboard/events",
        }
        assert set(paths["/proxy/{upstream}/{path}"]) == {
            "get",
            "head",
            "post",
            "put",
            "patch",
            "delete",
            "options",
        }
        assert {"400", "403", "404", "413", "502", "503", "504"} <= set(
            paths["/proxy/{upstream}/{path}"]["get"]["responses"]
        )
        reset = paths["/admin/breakers/{name}/reset"]["post"]
        assert {"401", "403", "404"} <= set(reset["responses"])
        assert reset["security"] == [{"HTTPBearer": []}]
        assert {"401", "403", "503"} <= set(paths["/readyz"]["get"]["responses"])
        assert "`/proxy/...`" in document["info"]["description"]  # which listener has what

    run(gateway_config(tmp_path), scenario)


def test_demo_upstream_switches_between_healthy_failing_and_slow(tmp_path: Path) -> None:
    config = gateway_config(tmp_path, public_url="http://gateway")

    async def scenario(client: httpx.AsyncClient) -> None:
        assert (await client.get("/demo/hello")).json()["demo"] == "ok"
        assert (await client.get("/demo/status/502")).status_code == 502
        failing = await client.put("/demo/mode", json={"mode": "failing"})
        assert failing.json() == {"mode": "failing", "failure_rate": 0.0, "delay": 2.0}
        assert (await client.get("/demo/hello")).status_code == 503
        await client.put("/demo/mode", json={"mode": "healthy", "failure_rate": 1.0})
        assert (await client.get("/demo/hello")).status_code == 503
        await client.put("/demo/mode", json={"mode": "slow", "delay": 0.01})
        assert (await client.get("/demo/hello")).status_code == 200
        assert (await client.get("/demo/mode")).json()["mode"] == "slow"
        refused = await client.put("/demo/mode", json={"mode": "broken"})
        assert refused.status_code == 422

    run(config, scenario)


def test_demo_upstream_counts_the_requests_it_answered(tmp_path: Path) -> None:
    config = gateway_config(tmp_path, public_url="http://gateway")

    async def scenario(client: httpx.AsyncClient) -> None:
        await client.get("/demo/hello")
        await client.get("/demo/status/500")
        await client.put("/demo/mode", json={"mode": "failing"})
        await client.post("/demo/orders")
        await client.get("/demo/mode")
        assert (await client.get("/demo/hits")).json() == {"hits": 3}

    run(config, scenario)


def test_unknown_route_and_method_are_json_on_either_listener(tmp_path: Path) -> None:
    async def scenario(client: httpx.AsyncClient) -> None:
        for base in ("", ADMIN):
            missing = await client.get(f"{base}/nowhere")
            assert (missing.status_code, missing.json()["error"]) == (404, "not_found")
            wrong = await client.delete(f"{base}/healthz")
            assert (wrong.status_code, wrong.json()["error"]) == (405, "method_not_allowed")

    run(gateway_config(tmp_path), scenario)


def test_admin_snapshot_while_redis_is_dead_is_503_json(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    config = gateway_config(tmp_path, redis_url=redis_server.url, upstreams="api=http://h")

    async def scenario(client: httpx.AsyncClient) -> None:
        redis_server.kill()
        response = await client.get(f"{ADMIN}/admin/breakers/api", headers=AUTH)
        assert response.status_code == 503
        assert response.json()["error"] == "backend_unavailable"

    run(config, scenario)


def test_metrics_count_what_the_breaker_counted_even_a_404_made_a_failure(
    tmp_path: Path, upstream: Upstream, backend: str | None
) -> None:
    """One judgement of outcomes, the breaker's: with ``failure_statuses`` a 404 is a
    failure, and ``/metrics`` says so because it reads the breaker's outcome events."""
    upstream.plan("/base/gone", Reply(404))
    upstream.plan("/base/fine", Reply(200))
    config = gateway_config(
        tmp_path,
        f"""
        [upstreams.api]
        url = "{upstream.url}/base"
        breaker = {{ failure_threshold = 10, failure_statuses = ["5xx", 404] }}
        """,
        redis_url=backend,
    )

    def counted(text: str, outcome: str) -> float:
        try:
            return metric(text, "fleetbreaker_calls_total", upstream="api", outcome=outcome)
        except AssertionError:
            return 0.0  # the counters live as long as the process: earlier tests add to them

    async def scenario(client: httpx.AsyncClient) -> None:
        before = (await client.get(f"{ADMIN}/metrics")).text
        for path in ("gone", "fine", "gone", "gone"):
            await client.get(f"/proxy/api/{path}")
        text = (await client.get(f"{ADMIN}/metrics")).text
        snapshot = (await client.get(f"{ADMIN}/admin/breakers/api", headers=AUTH)).json()
        failures = counted(text, "failure") - counted(before, "failure")
        successes = counted(text, "success") - counted(before, "success")
        assert (failures, successes) == (3, 1)
        assert (snapshot["window_failures"], snapshot["window_calls"]) == (3, 4)

    run(config, scenario)


def test_the_instance_header_names_the_replica_and_the_process(tmp_path: Path) -> None:
    toml = "[gateway]\nexpose_instance = true\n"

    async def scenario(client: httpx.AsyncClient) -> None:
        for url in ("/healthz", f"{ADMIN}/healthz"):
            response = await client.get(url)
            assert response.headers["x-fleetbreaker-instance"] == f"gateway-2/{os.getpid()}"

    run(gateway_config(tmp_path, toml, instance_name="gateway-2"), scenario)


def test_the_instance_name_defaults_to_the_host_name(tmp_path: Path) -> None:
    toml = "[gateway]\nexpose_instance = true\n"

    async def scenario(client: httpx.AsyncClient) -> None:
        response = await client.get("/healthz")
        assert response.headers["x-fleetbreaker-instance"] == (
            f"{socket.gethostname()}/{os.getpid()}"
        )

    run(gateway_config(tmp_path, toml), scenario)
