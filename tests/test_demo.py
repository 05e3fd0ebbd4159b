"""The README's run command: a gateway with no configuration at all prints its
dashboard's URL and three curl commands, and pasting them shows a request through,
the breaker tripping, and the admin view of it, on the admin listener."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from app.localfleet.services import fleetbreaker_command
from tests.support.gateway_process import GatewayProcess
from tests.support.ports import free_port

pytestmark = pytest.mark.slow


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[GatewayProcess]:
    if shutil.which("curl") is None:
        pytest.fail("curl is needed to paste the demo's commands (apt-get install -y curl)")
    process = GatewayProcess(tmp_path, {}, workers=1)
    process.start()
    yield process
    process.stop()


def paste(command: str) -> str:
    result = subprocess.run(
        ["bash", "-c", command], capture_output=True, text=True, timeout=60, check=True
    )
    return result.stdout


def test_the_three_printed_commands_work_as_pasted(demo: GatewayProcess) -> None:
    banner = demo.log()
    commands = [line.strip() for line in banner.splitlines() if line.startswith("   curl")]
    commands += [line.strip() for line in banner.splitlines() if line.startswith("   for i")]
    works, admin, trip = commands
    assert "HTTP/1.1 200 OK" in paste(works)
    assert paste(trip).split() == ["500", "500", "500", "503", "503"]
    view = json.loads(paste(admin))
    assert (view["name"], view["state"], view["failures"]) == ("demo", "open", 3)
    assert f" {demo.admin_url}/admin/breakers/demo" in admin  # never the proxy's port
    token = re.search(r"Bearer ([\w-]+)", admin)
    assert token is not None
    reset = paste(
        f"curl -s -X POST -H 'Authorization: Bearer {token[1]}' "
        f"{demo.admin_url}/admin/breakers/demo/reset"
    )
    assert json.loads(reset)["state"] == "closed"
    assert "HTTP/1.1 200 OK" in paste(works)


def test_the_banner_names_the_dashboard_on_its_own_listener(demo: GatewayProcess) -> None:
    [line] = [line for line in demo.log().splitlines() if line.startswith("Dashboard: ")]
    url = line.split()[1]
    assert url == f"{demo.admin_url}/dashboard"
    assert httpx.get(url, timeout=5).status_code == 200


def test_the_demo_upstream_prints_its_address_and_answers_there() -> None:
    port = free_port()
    process = subprocess.Popen(
        [*fleetbreaker_command(), "demo-upstream", "--port", str(port)],
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    try:
        assert process.stdout is not None
        first = process.stdout.readline()
        assert first.startswith(f"fleetbreaker demo-upstream: on http://127.0.0.1:{port} ")
        url = first.split()[3]
        deadline = time.monotonic() + 30
        while True:
            try:
                assert httpx.get(f"{url}/mode", timeout=1.0).json()["mode"] == "healthy"
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline
                time.sleep(0.05)
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.communicate(timeout=30)
