"""bandit over the code that ships (and the benchmark): no finding that is not justified.

The justified exemptions live in ``[tool.bandit]`` of pyproject.toml (with ruff's
matching S-rule exemptions) and as ``# nosec <id>`` on the line they excuse; both are
listed in RELIABILITY.md.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.reliability import Reliability

pytestmark = [pytest.mark.slow, pytest.mark.e2e]  # it runs processes

ROOT = Path(__file__).resolve().parent.parent
SCANNED = ("app", "breaker", "bench")


def test_bandit_finds_nothing_unjustified(reliability: Reliability) -> None:
    bandit = Path(sys.executable).with_name("bandit")
    command = [str(bandit), "-q", "-c", "pyproject.toml", "-r", *SCANNED, "-f", "json"]
    run = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
    report = json.loads(run.stdout)
    findings = [
        f"{result['filename']}:{result['line_number']} {result['test_id']} {result['issue_text']}"
        for result in report["results"]
    ]
    assert findings == []
    assert report["errors"] == []
    totals = report["metrics"]["_totals"]
    nosec = sorted(
        f"`{file.relative_to(ROOT)}`: {line[line.find('# nosec') + 2 :]}"
        for folder in SCANNED
        for file in (ROOT / folder).rglob("*.py")
        for line in file.read_text().splitlines()
        if "# nosec" in line
    )
    reliability.check(
        "bandit",
        "bandit -c pyproject.toml -r " + " ".join(SCANNED),
        f"No finding ({totals['loc']} lines scanned). Skipped by `[tool.bandit]`: B101 "
        "(asserts: they narrow types for mypy and never check input), B311 (random: it "
        "draws jitter and backoff, never a secret; the demo's admin token comes from "
        "`secrets`), B404 (importing subprocess). Excused on their line: "
        + "; ".join(nosec)
        + ". Each `subprocess` call runs a fixed program with arguments the code builds "
        "(no shell); `0.0.0.0` is compared against, not bound.",
    )
