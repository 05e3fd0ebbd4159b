"""``fleetbreaker fleet`` as a user runs it: it prints where everything listens, the
printed commands work, and Ctrl-C or SIGTERM stops every process it started (uvicorn's
workers included) and removes its temporary folder.

Orphans are found by a marker in the environment, which every descendant inherits.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.localfleet.services import FleetError, find_program, fleetbreaker_command
from tests.support import web
from tests.support.gateway_process import GatewayProcess
from tests.support.ports import free_port
from tests.topology_fixtures import skip_without

pytestmark = pytest.mark.slow

_START_TIMEOUT = 90.0
_STOP_TIMEOUT = 40.0
_MARK = "FLEETBREAKER_TEST_FLEET"


def processes_marked(mark: str) -> list[int]:
    """Pids of live processes whose environment carries ``_MARK=mark``."""
    needle = f"{_MARK}={mark}".encode()
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            environ = (proc / "environ").read_bytes()
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if needle in environ.split(b"\0") and state != "Z":
            found.append(int(proc.name))
    return found


def accepts(url: str) -> bool:
    host, port = url.removeprefix("http://").removeprefix("redis://").split("/")[0].split(":")
    with socket.socket() as sock:
        sock.settimeout(1.0)
        return sock.connect_ex((host, int(port))) == 0


class Running:
    """A ``fleetbreaker fleet`` process and what it printed."""

    def __init__(self, tmp_path: Path, *options: str) -> None:
        self.mark = uuid.uuid4().hex
        self.options = options
        self.output = tmp_path / "fleet.out"
        environ = {k: v for k, v in os.environ.items() if not k.startswith("BREAKER_")}
        with self.output.open("wb") as out:
            self.process = subprocess.Popen(
                [
                    *fleetbreaker_command(),
                    "fleet",
                    "--replicas",
                    "2",
                    "--workers",
                    "2",
                    "--port",
                    str(free_port()),
                    "--upstream-port",
                    str(free_port()),
                    *options,
                ],
                env={**environ, _MARK: self.mark},
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def text(self) -> str:
        return self.output.read_text(errors="replace")

    def printed(self, label: str) -> list[str]:
        """The values on the summary's line ``label``, without the note in brackets."""
        found = re.search(rf"^  {label} +(.+)$", self.text(), re.MULTILINE)
        assert found is not None, self.text()
        return found[1].split("(")[0].split()

    def wait_for_summary(self) -> None:
        deadline = time.monotonic() + _START_TIMEOUT
        while "Ctrl-C stops everything." not in self.text():
            assert self.process.poll() is None, self.text()
            assert time.monotonic() < deadline, self.text()
            time.sleep(0.1)


def _stopped(fleet: Running) -> None:
    if fleet.process.poll() is None:  # a failed test: let it clean up after itself
        fleet.process.terminate()
        try:
            fleet.process.wait(_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            fleet.process.kill()
            fleet.process.wait(_STOP_TIMEOUT)
    for pid in processes_marked(fleet.mark):
        os.kill(pid, signal.SIGKILL)


@pytest.fixture
def running(tmp_path: Path) -> Iterator[Running]:
    fleet = Running(tmp_path)
    yield fleet
    _stopped(fleet)


@pytest.fixture(params=["cluster", "sentinel"])
def running_on(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Running]:
    """``fleet --redis cluster`` or ``--redis sentinel``."""
    skip_without("redis-server", "redis-cli")
    fleet = Running(tmp_path, "--redis", request.param)
    yield fleet
    _stopped(fleet)


def redis_ports(url: str) -> list[int]:
    """The ports of a printed ``redis+cluster://`` or ``redis+sentinel://`` URL."""
    hosts = url.split("://", 1)[1].split("/")[0]
    return [int(host.rsplit(":", 1)[1]) for host in hosts.split(",")]


def test_a_missing_program_is_named_with_how_to_install_it(tmp_path: Path) -> None:
    with pytest.raises(FleetError, match=r"^nginx not found: install it \(apt-get"):
        find_program("nginx", "install it (apt-get install -y nginx)", str(tmp_path))


def test_a_taken_port_is_refused_before_anything_starts(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [*fleetbreaker_command(), "fleet", "--port", str(port)],
            capture_output=True,
            text=True,
            timeout=60,
            env={k: v for k, v in os.environ.items() if not k.startswith("BREAKER_")},
        )
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"fleetbreaker: port {port} is in use: pick another with --port"
    )


def readme_fleet_commands() -> list[str]:
    page = Path(__file__).parent.parent / "docs" / "quickstart" / "fleet.md"
    after = page.read_text().split("Then, for either", 1)[1]
    block = after.split("```bash\n", 1)[1].split("```")[0]
    return [line for line in block.splitlines() if line.strip()]


def test_the_native_fleet_serves_the_readme_commands_then_ctrl_c_stops_all_of_it(
    running: Running,
) -> None:
    """One fleet's life as a user lives it: the printed addresses answer, the README's
    commands work as pasted, and Ctrl-C stops every process it started (uvicorn's
    workers included) and removes its temporary folder. SIGTERM takes the same path
    (the Cluster test below sends it)."""
    running.wait_for_summary()
    [lb] = running.printed("load balancer")
    replicas = running.printed("replicas")
    [upstream] = running.printed("upstream")
    [redis_url] = running.printed("redis")
    [temporary] = running.printed("temporary")
    [token] = running.printed("admin token")
    admins = running.printed("admin API")
    workdir = Path(temporary)
    assert len(replicas) == len(admins) == 2
    auth = {"Authorization": f"Bearer {token}"}
    for admin in admins:  # each replica's own admin listener, never behind nginx
        seen = web.get(f"{admin}/admin/breakers/demo", headers=auth, timeout=10.0)
        assert seen.json()["state"] == "closed"
    assert web.get(f"{lb}/admin/breakers/demo", headers=auth, timeout=10.0).status_code == 404
    # At least the fleet, 2 replicas of a master and 2 workers, and the upstream.
    # redis-server and nginx write their process titles over their environment, and
    # nginx clears its workers': that those are gone shows below, as nothing accepts
    # on their ports any more.
    assert len(processes_marked(running.mark)) >= 1 + 2 * 3 + 1
    assert workdir.is_dir()

    def paste(command: str) -> str:
        command = command.replace("localhost:8080", lb.removeprefix("http://"))
        command = command.replace("localhost:9000", upstream.removeprefix("http://"))
        result = subprocess.run(
            ["bash", "-c", command],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
            env={**os.environ, "TOKEN": token, "ADMIN": admins[0].removeprefix("http://")},
        )
        return result.stdout

    hello, failing, hits_before, loop, hits_after, view, healthy, reset = readme_fleet_commands()
    assert "HTTP/1.1 200 OK" in paste(hello)
    assert "x-fleetbreaker-instance:" in paste(hello).lower()
    paste(failing)
    before = json.loads(paste(hits_before))["hits"]
    paste(loop)
    assert json.loads(paste(hits_after))["hits"] - before == 5
    state = json.loads(paste(view))
    assert (state["state"], state["failures"]) == ("open", 5)
    paste(healthy)
    assert json.loads(paste(reset))["state"] == "closed"
    assert "HTTP/1.1 200 OK" in paste(hello)
    [printed_redis_cli] = [
        line.strip() for line in running.text().splitlines() if "redis-cli -u" in line
    ]
    assert "state\nclosed\n" in paste(printed_redis_cli)

    os.kill(running.process.pid, signal.SIGINT)  # what the terminal's Ctrl-C sends
    assert running.process.wait(_STOP_TIMEOUT) == 0

    assert processes_marked(running.mark) == []
    assert not workdir.exists()
    for url in [lb, upstream, redis_url, *replicas, *admins]:
        assert not accepts(url), url


def test_the_fleet_on_its_own_cluster_or_sentinel_set_serves_then_stops_all_of_it(
    running_on: Running, tmp_path: Path
) -> None:
    """The Cluster fleet is stopped by SIGTERM, as a service manager does; the Sentinel
    fleet is killed outright (SIGKILL), which leaves no handler to run: the kernel's
    parent-death signal (setpriv) stops its children instead, every node included, and
    only the temporary folder is left behind, for the next start of fleetbreaker to
    remove. (Ctrl-C is the native fleet's test above.)"""
    running_on.wait_for_summary()
    kind = running_on.options[-1]
    [lb] = running_on.printed("load balancer")
    admins = running_on.printed("admin API")
    [redis_url] = running_on.printed("redis")
    [temporary] = running_on.printed("temporary")
    [token] = running_on.printed("admin token")
    assert redis_url.startswith(f"redis+{kind}://127.0.0.1:")
    ports = redis_ports(redis_url)
    assert len(ports) == (6 if kind == "cluster" else 3)  # every node; the sentinels

    answer = web.get(f"{lb}/proxy/demo/hello", timeout=10.0)
    auth = {"Authorization": f"Bearer {token}"}
    view = web.get(f"{admins[0]}/admin/breakers/demo", headers=auth, timeout=10.0)
    # Ready once every primary answered one probe within backend_timeout: on a loaded
    # machine a node can miss one; poll, bounded.
    deadline = time.monotonic() + 15.0
    while True:
        ready = web.get(f"{admins[0]}/readyz", headers=auth, timeout=10.0).json()
        if ready["status"] == "ready" or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    [cli_line] = [
        line.split("(")[0] for line in running_on.text().splitlines() if "HGETALL" in line
    ]
    # The breaker's hash is written by the first batch of counts; on a loaded machine a
    # batch can outlast backend_timeout and be dropped (said in the log), and the next
    # one writes it: poll, bounded.
    deadline = time.monotonic() + 15.0
    while True:
        stored = subprocess.run(
            ["bash", "-c", cli_line], capture_output=True, text=True, timeout=60, check=True
        ).stdout
        if "state\nclosed\n" in stored or time.monotonic() > deadline:
            break
        web.get(f"{lb}/proxy/demo/hello", timeout=10.0)  # counts for the next batch
        time.sleep(0.2)

    assert answer.status_code == 200
    assert (view.json()["state"], view.json()["backend"]) == ("closed", "redis")
    assert (ready["status"], ready["topology"]) == ("ready", kind), ready
    assert "state\nclosed\n" in stored  # the printed redis-cli line reads the breaker
    assert all(accepts(f"http://127.0.0.1:{port}") for port in ports)

    if kind == "cluster":
        os.kill(running_on.process.pid, signal.SIGTERM)
        assert running_on.process.wait(_STOP_TIMEOUT) == 0
        assert processes_marked(running_on.mark) == []
        assert not Path(temporary).exists()
        for port in ports:
            assert not accepts(f"http://127.0.0.1:{port}"), port
        exits = [line for line in running_on.text().splitlines() if " exited (code" in line]
        assert exits == []  # no node died before the fleet stopped it
        return

    if shutil.which("setpriv") is None:
        pytest.fail("setpriv (util-linux) is needed for the fleet's orphan guard")
    running_on.process.kill()
    running_on.process.wait(_STOP_TIMEOUT)
    deadline = time.monotonic() + _STOP_TIMEOUT
    while time.monotonic() < deadline and (
        processes_marked(running_on.mark)
        or accepts(lb)
        or any(accepts(f"http://127.0.0.1:{p}") for p in ports)
    ):
        time.sleep(0.1)
    try:
        assert [p for p in ports if accepts(f"http://127.0.0.1:{p}")] == []
        assert processes_marked(running_on.mark) == []
        assert not accepts(lb)
        # Any start of fleetbreaker on this machine removes it: under xdist another
        # worker's may have come first.
        if Path(temporary).is_dir():
            following = GatewayProcess(tmp_path, {}, workers=1)
            following.start()
            following.stop()
        assert not Path(temporary).exists()
    finally:
        shutil.rmtree(temporary, ignore_errors=True)


def test_the_fleet_refuses_its_own_cluster_and_breaker_redis_url_together(tmp_path: Path) -> None:
    result = subprocess.run(
        [*fleetbreaker_command(), "fleet", "--redis", "cluster"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "BREAKER_REDIS_URL": "redis://127.0.0.1:6379/0"},
    )
    assert result.returncode == 2
    assert result.stderr == (
        "fleetbreaker: --redis cluster starts a Redis of its own: unset BREAKER_REDIS_URL, "
        "or leave --redis out to use that one\n"
    )
