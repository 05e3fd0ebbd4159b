"""Reading the gateway's Prometheus exposition, and the pinned list of its families."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

GOLDEN = Path(__file__).parent.parent / "golden" / "metrics.txt"


@dataclass(frozen=True)
class Family:
    """One exported metric family: its name as queried (``_total`` on counters), its
    type and its label names (``le`` left out: it is the histogram's own)."""

    name: str
    type: str
    labels: frozenset[str]


def pinned() -> dict[str, Family]:
    """``tests/golden/metrics.txt``, by name."""
    families = {}
    for line in GOLDEN.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        name, kind, labels = line.split()
        names = frozenset() if labels == "-" else frozenset(labels.split(","))
        families[name] = Family(name, kind, names)
    return families


def exported(text: str, prefix: str = "fleetbreaker_") -> dict[str, Family]:
    """The families of ``text`` whose name starts with ``prefix``; a family with no
    sample (a labelled metric nothing has used yet) has no labels to tell."""
    families = {}
    for family in text_string_to_metric_families(text):
        name = f"{family.name}_total" if family.type == "counter" else family.name
        if not name.startswith(prefix):
            continue
        labels = {key for sample in family.samples for key in sample.labels} - {"le"}
        families[name] = Family(name, family.type, frozenset(labels))
    return families


def series_names(family: Family) -> set[str]:
    """The sample names a query may use for ``family``."""
    if family.type == "histogram":
        return {f"{family.name}_{suffix}" for suffix in ("bucket", "sum", "count")}
    return {family.name}
