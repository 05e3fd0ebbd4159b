"""An incident, counted from outside a 2-worker gateway.

- Through a real Prometheus (Debian's ``prometheus``, started here on a free port,
  scraping the gateway every second): the Grafana panels' own expressions, read from
  deploy/grafana/fleetbreaker.json, count the trip, the half-open and the close, and
  the failure rate peaks above 0. Counters that first appeared at their first event
  were never counted by rate() or increase().
- Through the admin API: every rejection, within a second of the last.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.gateway import TOKEN
from tests.support.gateway_process import GatewayProcess, gateway_with_redis
from tests.support.ports import free_port
from tests.support.upstream import Reply, Upstream
from tests.topology_fixtures import skip_without

pytestmark = pytest.mark.slow

DASHBOARD = Path(__file__).resolve().parents[1] / "deploy" / "grafana" / "fleetbreaker.json"
SCRAPE = 1.0  # seconds
#: Grafana's $__rate_interval for a 1 s scrape: 4 scrape intervals.
RATE_INTERVAL = "4s"


def panel_expressions() -> list[str]:
    found: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("expr"), str):
                found.append(node["expr"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(json.loads(DASHBOARD.read_text()))
    return found


def panel(words: str) -> str:
    """The one panel expression holding ``words``, for upstream "api"."""
    [expr] = [expr for expr in panel_expressions() if words in expr]
    return expr.replace("$upstream", "api").replace("$__rate_interval", RATE_INTERVAL)


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A Prometheus on a free port; the test writes its scrape target into the file
    this yields (file_sd: reread every second)."""
    skip_without("prometheus")
    binary = shutil.which("prometheus")
    assert binary is not None
    targets = tmp_path / "targets.json"
    targets.write_text("[]")
    config = tmp_path / "prometheus.yml"
    config.write_text(
        f"""
global:
  scrape_interval: {SCRAPE:g}s
  evaluation_interval: {SCRAPE:g}s
scrape_configs:
  - job_name: gateway
    authorization:
      credentials: {TOKEN}
    file_sd_configs:
      - files: ["{targets}"]
        refresh_interval: 1s
"""
    )
    port = free_port()
    log = (tmp_path / "prometheus.log").open("wb")
    process = subprocess.Popen(
        [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30.0
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/-/ready", timeout=1.0).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        else:
            raise RuntimeError(
                f"prometheus did not start:\n{(tmp_path / 'prometheus.log').read_text()}"
            )
        yield url, targets
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def query(url: str, expr: str) -> list[dict[str, Any]]:
    answer = httpx.get(f"{url}/api/v1/query", params={"query": expr}, timeout=10.0).json()
    assert answer["status"] == "success", answer
    result: list[dict[str, Any]] = answer["data"]["result"]
    return result


def wait_for_scrapes(url: str, job_up: str, count: int) -> None:
    """Until Prometheus holds ``count`` samples of ``job_up`` (bounded: 30 s)."""
    deadline = time.monotonic() + 30.0
    while time.monotonic() < deadline:
        found = query(url, f"count_over_time({job_up}[5m])")
        if found and float(found[0]["value"][1]) >= count:
            return
        time.sleep(0.2)
    raise AssertionError(f"fewer than {count} scrapes of {job_up}")


def test_the_dashboards_expressions_count_a_whole_incident(
    tmp_path: Path, prometheus: tuple[str, Path], upstream: Upstream
) -> None:
    url, targets = prometheus
    upstream.plan("/item", Reply(503), Reply(503), Reply(503), Reply(200))
    config = f"""
[defaults.retry]
attempts = 1
[upstreams.api]
url = "{upstream.url}"
breaker = {{ failure_threshold = 3, reset_timeout = 1.0, batch_interval = false }}
"""
    with gateway_with_redis(tmp_path, config, workers=2) as gateway:
        assert isinstance(gateway, GatewayProcess)
        host = f"127.0.0.1:{gateway.admin_port}"
        targets.write_text(json.dumps([{"targets": [host]}]))
        # Two scrapes of a fresh gateway first: every counter at 0, as Prometheus sees it.
        wait_for_scrapes(url, 'up{job="gateway"}', 2)
        started = time.monotonic()
        with httpx.Client(timeout=5.0) as client:
            answers = [client.get(f"{gateway.url}/proxy/api/item").status_code for _ in range(5)]
            assert answers == [503, 503, 503, 503, 503]  # 3 failures, then refused
            # The open time is the subject: a real second, polled (bounded).
            closed = False
            while not closed and time.monotonic() - started < 15.0:
                time.sleep(0.2)
                closed = client.get(f"{gateway.url}/proxy/api/item").status_code == 200
            assert closed
        time.sleep(3 * SCRAPE)  # every worker's counts scraped after the close
        wait_for_scrapes(url, 'up{job="gateway"}', 6)
        window = f"[{int(time.monotonic() - started) + 10}s:1s]"

        def peak(expr: str, **labels: str) -> float:
            """The panel's highest value over the incident, for the series of ``labels``."""
            series = query(url, f"max_over_time(({expr}){window})")
            values = [
                float(each["value"][1])
                for each in series
                if all(each["metric"].get(k) == v for k, v in labels.items())
            ]
            return max(values, default=0.0)

        transitions = panel("fleetbreaker_transitions_total")
        for source, target in (("closed", "open"), ("open", "half_open"), ("half_open", "closed")):
            assert peak(transitions, from_state=source, to_state=target) > 0.5, (source, target)
        assert (
            peak(
                panel("sum by (upstream, outcome) (rate(fleetbreaker_calls_total"),
                outcome="failure",
            )
            > 0
        )
        assert peak(panel('outcome="failure"}')) > 0  # the failure-rate panel
        assert peak(panel("fleetbreaker_requests_total"), result="5xx") > 0


def test_the_admin_view_counts_every_rejection_within_a_second(
    tmp_path: Path, upstream: Upstream
) -> None:
    """While the breaker is open, 2 workers reject requests; no request follows the
    last one. The admin view's window_rejections equals the clients' count within the
    report's second (and a poll), not at each worker's next call."""
    upstream.plan("/item", Reply(503))
    config = f"""
[defaults.retry]
attempts = 1
[upstreams.api]
url = "{upstream.url}"
breaker = {{ failure_threshold = 1, reset_timeout = 60 }}
"""
    with gateway_with_redis(tmp_path, config, workers=2) as gateway:
        auth = {"Authorization": f"Bearer {TOKEN}"}
        with httpx.Client(timeout=5.0) as client:
            assert client.get(f"{gateway.url}/proxy/api/item").status_code == 503  # trips
            answers = [
                client.get(f"{gateway.url}/proxy/api/item").json()["error"] for _ in range(12)
            ]
            assert answers == ["circuit_open"] * 12
            refused = len(answers)
            last = time.monotonic()
            counted = -1
            while time.monotonic() - last < 5.0:  # bounded; the claim is 1 s and a poll
                view = client.get(f"{gateway.admin_url}/admin/breakers/api", headers=auth)
                counted = view.json()["window_rejections"]
                if counted == refused:
                    break
                time.sleep(0.05)
            took = time.monotonic() - last
    assert counted == refused
    assert took < 2.0, took
