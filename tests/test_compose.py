"""docker-compose.yml, for real: ``scripts/compose-check`` builds the image, runs the
compose fleet on a Docker engine (it starts dockerd when none answers), checks it end
to end through nginx's published port as tests/test_fleet_e2e.py checks the native
fleet, and brings it down. The fleet quickstart's "With Docker" commands
(docs/quickstart/fleet.md) are the ones it runs.

Where no Docker engine can run (the script exits 3 and says why), the check skips with
the reason, and with ``CI=true`` it fails with it.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "compose-check"
#: The fleet quickstart, whose "With Docker" commands the script runs.
FLEET_PAGE = (ROOT / "docs" / "quickstart" / "fleet.md").read_text()
IN_CI = os.environ.get("CI", "").lower() == "true"

_UNAVAILABLE = 3  # compose-check's exit status when no Docker engine can run here,
_NO_ENGINE = "compose-check: no Docker engine: "  # and the line that says why
# About 2 minutes with every base to build (debootstrap, apt-get), 1 once they are kept.
_BUDGET = 900.0
_STOP_GRACE = 60.0  # for its trap to bring the fleet down after SIGTERM

# The fleet quickstart's commands as the script writes them: `compose` is its function that runs
# `docker compose` (or docker-compose 1.x) in a project of its own, and its env file
# stands for the user's .env.
_AS_THE_SCRIPT_WRITES_IT = [
    ("docker compose ", "compose "),
    ("cp .env.example .env", 'cp .env.example "$env_file"'),
]


def run_a_fleet_section() -> str:
    return FLEET_PAGE


def commands(block: str) -> list[str]:
    lines = (line.split("#", 1)[0].strip() for line in block.splitlines())
    return [line for line in lines if line]


def readme_compose_commands() -> list[str]:
    """The "With Docker" block, then every other `docker compose` line of the section."""
    section = run_a_fleet_section()
    with_docker = re.search(r"\nWith Docker:\n\n```bash\n(.*?)```", section, re.DOTALL)
    assert with_docker is not None, "docs/quickstart/fleet.md: no bash block after 'With Docker:'"
    listed = commands(with_docker[1])
    for block in re.findall(r"```bash\n(.*?)```", section, re.DOTALL):
        listed += [c for c in commands(block) if c.startswith("docker compose ")]
    return list(dict.fromkeys(listed))


def script_lines() -> set[str]:
    lines = (line.split(" #", 1)[0].strip() for line in SCRIPT.read_text().splitlines())
    return {line for line in lines if line}


def as_the_script_writes_it(command: str) -> str:
    for readme, script in _AS_THE_SCRIPT_WRITES_IT:
        command = command.replace(readme, script)
    return command


def runs(line: str, command: str) -> bool:
    """The script's line runs the command as it is, perhaps redirected or piped."""
    return line == command or re.match(rf"{re.escape(command)} [<>|]", line) is not None


def test_the_script_runs_every_compose_command_of_the_readme() -> None:
    listed = readme_compose_commands()
    assert {"docker compose build", "docker compose up -d", "docker compose down -v"} <= set(listed)
    missing = [
        command
        for command in listed
        if not any(runs(line, as_the_script_writes_it(command)) for line in script_lines())
    ]
    assert not missing, f"fleet.md commands that scripts/compose-check does not run: {missing}"


@pytest.mark.slow
@pytest.mark.e2e
@pytest.mark.timeout(_BUDGET + _STOP_GRACE + 30)
def test_the_compose_fleet_trips_rejects_resets_and_survives_a_killed_gateway() -> None:
    output = run_compose_check()
    print(output)


def run_compose_check() -> str:
    """The script's output; fails on a failed check, skips (outside CI) where no
    Docker engine can run. In a session of its own: on timeout, SIGTERM reaches
    every process of it and the script's trap brings the fleet down."""
    with subprocess.Popen(
        [str(SCRIPT)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    ) as script:
        try:
            output, _ = script.communicate(timeout=_BUDGET)
        except subprocess.TimeoutExpired:
            os.killpg(script.pid, signal.SIGTERM)
            try:
                output, _ = script.communicate(timeout=_STOP_GRACE)
            except subprocess.TimeoutExpired:
                os.killpg(script.pid, signal.SIGKILL)
                output, _ = script.communicate()
            pytest.fail(f"compose-check ran over {_BUDGET:.0f} s:\n{tail(output)}")
    if script.returncode == _UNAVAILABLE:
        said = (line for line in output.splitlines() if line.startswith(_NO_ENGINE))
        reason = next(said, f"compose-check: exit {_UNAVAILABLE}, no reason given")
        if IN_CI:
            pytest.fail(f"CI=true but {reason}")
        pytest.skip(reason)
    assert script.returncode == 0, tail(output)
    return output


def tail(output: str, lines: int = 60) -> str:
    """The script's own lines (its steps and the failed check), then the last lines of
    everything, compose's logs included."""
    own = [line for line in output.splitlines() if line.startswith("compose-check")]
    return "\n".join([*own, "...", *output.splitlines()[-lines:]])
