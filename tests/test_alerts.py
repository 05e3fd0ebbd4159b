"""The shipped alert rules (deploy/prometheus/alerts.yml): valid for Prometheus
(``promtool check rules``), each alert firing as its unit tests say
(``promtool test rules``, deploy/prometheus/alerts_test.yml), and reading only
metrics the gateway exports (tests/golden/metrics.txt)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import yaml

from tests.topology_fixtures import skip_without

RULES = Path(__file__).resolve().parents[1] / "deploy" / "prometheus"
GOLDEN = Path(__file__).parent / "golden" / "metrics.txt"


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    skip_without("promtool")
    return subprocess.run(
        ["promtool", *args], cwd=RULES, capture_output=True, text=True, timeout=60, check=False
    )


def test_the_rules_are_valid() -> None:
    done = promtool("check", "rules", "alerts.yml")
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_alert_fires_as_its_unit_tests_say() -> None:
    done = promtool("test", "rules", "alerts_test.yml")
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_alert_is_unit_tested_and_reads_exported_metrics() -> None:
    rules = yaml.safe_load((RULES / "alerts.yml").read_text())["groups"][0]["rules"]
    tests = (RULES / "alerts_test.yml").read_text()
    exported = {line.split()[0] for line in GOLDEN.read_text().splitlines() if line[:1] != "#"}
    for rule in rules:
        assert f"alertname: {rule['alert']}" in tests, rule["alert"]
        for metric in re.findall(r"fleetbreaker_\w+", rule["expr"]):
            family = re.sub(r"_(bucket|sum|count)$", "", metric)  # a histogram's series
            assert family in exported, (rule["alert"], metric)
