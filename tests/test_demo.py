"""The README's run command: a gateway with no configuration at all prints its
dashboard's URL and three curl commands, and pasting them shows a request through,
the breaker tripping, and the admin view of it, on the admin listener."""

from __future__ import annotations

import asyncio
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
from app.server.demo import create_demo_upstream
from tests.support import web
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
    assert web.get(url, timeout=5).status_code == 200


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
                assert web.get(f"{url}/mode", timeout=1.0).json()["mode"] == "healthy"
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline
                time.sleep(0.05)
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.communicate(timeout=30)


def test_a_call_held_by_slow_mode_is_let_go_by_the_next_change_of_mode() -> None:
    """What the fleet's recovery test builds on: the trial calls are held while the
    rest of a burst is refused, and let go when the test says so, not after a sleep."""

    async def scenario() -> tuple[int, float, dict[str, object]]:
        transport = httpx.ASGITransport(app=create_demo_upstream())
        async with httpx.AsyncClient(transport=transport, base_url="http://demo") as client:
            await client.put("/mode", json={"mode": "slow", "delay": 60})
            held = asyncio.create_task(client.get("/order"))
            await asyncio.sleep(0.05)
            assert not held.done()
            started = time.monotonic()
            await client.put("/mode", json={"mode": "healthy"})
            answer = await asyncio.wait_for(held, 10.0)
            return answer.status_code, time.monotonic() - started, answer.json()

    status, took, body = asyncio.run(scenario())
    assert (status, body["demo"]) == (200, "ok")
    assert took < 10.0  # let go by the change, not by the minute's delay
