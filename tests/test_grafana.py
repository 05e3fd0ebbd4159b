"""``deploy/grafana/fleetbreaker.json`` is a dashboard Grafana can import, and every
query in it names metrics and labels the gateway exports (``tests/golden/metrics.txt``),
so no panel is silently empty after a rename."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.support.exposition import Family, pinned, series_names

DASHBOARD = Path(__file__).parent.parent / "deploy" / "grafana" / "fleetbreaker.json"
_METRIC = re.compile(r"\bfleetbreaker_\w+")
_MATCHER = re.compile(r"(\w+)\s*(?:=~|!~|!=|=)\s*\"")
_GROUPING = re.compile(r"\b(?:by|without)\s*\(([^)]*)\)")
_LEGEND = re.compile(r"\{\{\s*(\w+)\s*\}\}")


def _dashboard() -> dict[str, Any]:
    document: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return document


def _queries(document: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """Every (query, legend) of every panel, rows included."""
    for panel in document["panels"]:
        for inner in [panel, *panel.get("panels", [])]:
            for target in inner.get("targets", []):
                yield target["expr"], target.get("legendFormat", "")


def _families_of(expr: str, families: dict[str, Family]) -> list[Family]:
    by_series = {series: f for f in families.values() for series in series_names(f)}
    used = set(_METRIC.findall(expr))
    unknown = used - set(by_series)
    assert not unknown, f"{expr}: not exported: {sorted(unknown)}"
    return [by_series[name] for name in sorted(used)]


def test_the_dashboard_is_importable_json_with_a_prometheus_input() -> None:
    document = _dashboard()
    assert document["uid"] == "fleetbreaker"
    assert [source["pluginId"] for source in document["__inputs"]] == ["prometheus"]
    assert len(list(_queries(document))) >= 10


def test_every_query_names_exported_metrics_and_their_labels() -> None:
    families = pinned()
    for expr, legend in _queries(_dashboard()):
        used = _families_of(expr, families)
        assert used, f"{expr}: names no fleetbreaker metric"
        allowed = set().union(*(family.labels for family in used))
        if "_bucket" in expr:
            allowed.add("le")
        labels = set(_MATCHER.findall(expr))
        for grouping in _GROUPING.findall(expr):
            labels |= {name.strip() for name in grouping.split(",") if name.strip()}
        labels |= set(_LEGEND.findall(legend))
        assert labels <= allowed, f"{expr}: labels {sorted(labels - allowed)} are not exported"


def test_the_upstream_variable_reads_an_exported_label() -> None:
    families = pinned()
    [variable] = [v for v in _dashboard()["templating"]["list"] if v["name"] == "upstream"]
    query = re.fullmatch(r"label_values\((\w+), (\w+)\)", variable["definition"])
    assert query is not None
    metric, label = query.groups()
    assert label in families[metric].labels
