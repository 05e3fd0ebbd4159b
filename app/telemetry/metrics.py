"""Prometheus metrics, correct with one worker or many.

Counters and the latency histogram are prometheus-client's own; with several uvicorn
workers ``fleetbreaker serve`` points ``PROMETHEUS_MULTIPROC_DIR`` at a fresh folder
and ``/metrics`` sums every worker's files. The breaker state is not counted by any
process: it is read from Redis when scraped, so every replica reports the fleet's one
state.

Each transition is counted once in the whole fleet, by the process whose call made it
(``add_listener(made_here_only=True)``), so ``sum(fleetbreaker_transitions_total)``
over replicas is the number of transitions.

The names follow Prometheus' conventions (base units, ``_total`` on counters, no
``_created`` series) and borrow their meaning from the peers: the breaker's state and
calls from resilience4j, retries from Envoy (retries, retry successes, overflow). Every
label is low-cardinality: an upstream name, an outcome, a state, a script or a reason;
never a path or a URL. ``tests/test_metrics_golden.py`` pins every family.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from breaker import STATES, BreakerSnapshot, BulkheadSnapshot

# A ``_created`` gauge per counter and histogram child: not part of the text format's
# conventions, absent in multiprocess mode anyway; one worker or many export the same.
disable_created_metrics()  # type: ignore[no-untyped-call]

REQUESTS = Counter(
    "fleetbreaker_requests_total",
    "Proxied requests, by upstream and answer: a status class or an error code.",
    ["upstream", "result"],
)
CALLS = Counter(
    "fleetbreaker_calls_total",
    "Calls through an upstream's breaker, as the breaker counted them: success, failure, "
    "ignored, or rejected (not made).",
    ["upstream", "outcome"],
)
CALL_DURATION = Histogram(
    "fleetbreaker_call_duration_seconds",
    "How long each call the breaker let through took, by how it counted (success, "
    "failure, ignored); a response counts when its body ends.",
    ["upstream", "outcome"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
LOCAL_ORIGIN_FAILURES = Counter(
    "fleetbreaker_local_origin_failures_total",
    "Failures at the connection level (refused, reset before the request was written, "
    "connect time-out, DNS): the request never reached the upstream. Seen by one "
    "replica alone, its path is broken, not the upstream. Also in calls_total.",
    ["upstream"],
)
FALLBACK_DECISIONS = Counter(
    "fleetbreaker_fallback_decisions_total",
    "Calls decided by the in-process fallback breaker while Redis could not be reached, "
    "by outcome.",
    ["upstream", "outcome"],
)
TRANSITIONS = Counter(
    "fleetbreaker_transitions_total",
    "Breaker state transitions, each counted by the one process that made it.",
    ["upstream", "from_state", "to_state"],
)
BODIES_BROKEN = Counter(
    "fleetbreaker_bodies_broken_total",
    "Responses cut after their headers were passed on: the upstream's body broke off "
    "(upstream_body_broken) or outlasted body_timeout (upstream_body_timeout).",
    ["upstream", "error"],
)
RETRIES = Counter("fleetbreaker_retries_total", "Retries sent to an upstream.", ["upstream"])
RETRY_SUCCESSES = Counter(
    "fleetbreaker_retry_successes_total",
    "Retries that the breaker counted as a success (Envoy's upstream_rq_retry_success).",
    ["upstream"],
)
REQUEST_ATTEMPTS = Histogram(
    "fleetbreaker_request_attempts",
    "Attempts that reached the upstream per proxied request (0: the breaker refused the first).",
    ["upstream"],
    buckets=(0, 1, 2, 3, 4, 5, 10),
)
RETRIES_REFUSED = Counter(
    "fleetbreaker_retries_refused_total",
    "Retries that were wanted but not sent: attempts, deadline or budget.",
    ["upstream", "reason"],
)
BACKEND_ERRORS = Counter(
    "fleetbreaker_backend_errors_total", "Redis commands of the breakers that failed."
)
BACKEND_CALL_DURATION = Histogram(
    "fleetbreaker_backend_call_duration_seconds",
    "Round trip of each breaker script to Redis, by script.",
    ["script"],
    buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
)
EVENTS_SUBSCRIPTIONS = Counter(
    "fleetbreaker_events_subscriptions_total",
    "Subscriptions of the worker's events follower to the Redis events channel: the "
    "first, then one per reconnect (transitions published in between may be missed).",
)
LATENCY = Histogram(
    "fleetbreaker_upstream_latency_seconds",
    "Time from sending an attempt to the upstream's response headers.",
    ["upstream"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)

LOOP_LAG = Histogram(
    "fleetbreaker_event_loop_lag_seconds",
    "How late the worker's event loop ran a timer: time it spent on something that "
    "did not yield (sampled every 0.1 s).",
    buckets=(0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

#: Every label value known before the first request, by family: a series that first
#: appears at 3 is never counted by rate() or increase(), which need two samples, so
#: each exists at 0 from startup, for every configured upstream.
_OUTCOMES = ("success", "failure", "ignored", "rejected")
_RESULTS = (
    "2xx",
    "3xx",
    "4xx",
    "5xx",
    "circuit_open",
    "bulkhead_full",
    "backend_unavailable",
    "overloaded",
    "upstream_timeout",
    "upstream_unavailable",
)
_AUTOMATIC = (
    ("closed", "open"),
    ("open", "half_open"),
    ("half_open", "closed"),
    ("half_open", "open"),
)
#: What an operator can do from any state: reset (to closed), force_open, disable.
TRANSITION_PAIRS = _AUTOMATIC + tuple(
    (source, target)
    for source in STATES
    for target in ("closed", "forced_open", "disabled")
    if (source, target) not in _AUTOMATIC and (source != target or target == "closed")
)
_REFUSALS = ("attempts", "deadline", "budget")
_BODY_ERRORS = ("upstream_body_broken", "upstream_body_timeout")


def zero_series(upstream: str, *, guarded: bool) -> None:
    """Every series of ``upstream`` the dashboards and alerts read, at 0 from startup
    (``guarded``: it has a breaker, so calls, transitions and retries too)."""
    for result in _RESULTS:
        REQUESTS.labels(upstream, result)
    for error in _BODY_ERRORS:
        BODIES_BROKEN.labels(upstream, error)
    REQUEST_ATTEMPTS.labels(upstream)
    if not guarded:
        return
    for outcome in _OUTCOMES:
        CALLS.labels(upstream, outcome)
        FALLBACK_DECISIONS.labels(upstream, outcome)
        if outcome != "rejected":  # a rejected call took no time
            CALL_DURATION.labels(upstream, outcome)
    for source, target in TRANSITION_PAIRS:
        TRANSITIONS.labels(upstream, source, target)
    for reason in _REFUSALS:
        RETRIES_REFUSED.labels(upstream, reason)
    RETRIES.labels(upstream)
    RETRY_SUCCESSES.labels(upstream)
    LOCAL_ORIGIN_FAILURES.labels(upstream)


class _Scraped(Collector):
    """Gauges read at scrape time: the fleet's breaker states and Redis reachability."""

    def __init__(
        self,
        snapshots: dict[str, BreakerSnapshot | None],
        backend_up: bool,
        conflicts: dict[str, bool],
        occupancies: dict[str, BulkheadSnapshot | None],
    ) -> None:
        self._snapshots = snapshots
        self._backend_up = backend_up
        self._conflicts = conflicts
        self._occupancies = occupancies

    def collect(self) -> Iterator[Metric]:
        state = GaugeMetricFamily(
            "fleetbreaker_breaker_state",
            "1 for the breaker's current state (read from its backend when scraped).",
            labels=["upstream", "state"],
        )
        failures = GaugeMetricFamily(
            "fleetbreaker_breaker_consecutive_failures",
            "Consecutive failures the breaker has counted.",
            labels=["upstream"],
        )
        conflict = GaugeMetricFamily(
            "fleetbreaker_breaker_settings_conflict",
            "1 when the settings stored with the breaker differ from this replica's: "
            "another app (or version) stored them, and every call runs with them.",
            labels=["upstream"],
        )
        isolated = GaugeMetricFamily(
            "fleetbreaker_breaker_isolated_processes",
            "Processes refusing their own calls to the upstream, its breaker being "
            "closed for the fleet: under a quorum, their own failures alone would trip it.",
            labels=["upstream"],
        )
        for name, snapshot in self._snapshots.items():
            if snapshot is None:
                continue
            for each in STATES:
                state.add_metric([name, each], 1.0 if snapshot.state == each else 0.0)
            failures.add_metric([name], float(snapshot.failures))
            conflict.add_metric([name], 1.0 if self._conflicts.get(name) else 0.0)
            isolated.add_metric([name], float(len(snapshot.isolated)))
        leases = GaugeMetricFamily(
            "fleetbreaker_bulkhead_leases",
            "Calls in flight to the upstream across the fleet: its bulkhead's leases "
            "(read from its backend when scraped).",
            labels=["upstream"],
        )
        limit = GaugeMetricFamily(
            "fleetbreaker_bulkhead_limit",
            "The most calls in flight the upstream's bulkhead lets through, fleet-wide.",
            labels=["upstream"],
        )
        for name, occupancy in self._occupancies.items():
            if occupancy is None:
                continue
            leases.add_metric([name], float(occupancy.in_use))
            limit.add_metric([name], float(occupancy.limit))
        up = GaugeMetricFamily(
            "fleetbreaker_backend_up", "1 when the breakers' backend answered the scrape."
        )
        up.add_metric([], 1.0 if self._backend_up else 0.0)
        yield from (state, failures, conflict, isolated, leases, limit, up)


def exposition(
    snapshots: dict[str, BreakerSnapshot | None],
    backend_up: bool,
    conflicts: dict[str, bool] | None = None,
    occupancies: dict[str, BulkheadSnapshot | None] | None = None,
) -> bytes:
    """The text of ``/metrics``: this worker's (or every worker's) counters, and gauges
    of the fleet's breakers (``conflicts``: which hold settings not this replica's)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        counters = CollectorRegistry()
        multiprocess.MultiProcessCollector(counters)  # type: ignore[no-untyped-call]
    else:
        counters = REGISTRY
    scraped = CollectorRegistry()
    scraped.register(_Scraped(snapshots, backend_up, conflicts or {}, occupancies or {}))
    return generate_latest(counters) + generate_latest(scraped)


def result_of(status: int | None, error: str | None) -> str:
    """The ``result`` label of a proxied request."""
    return error if error is not None else f"{status // 100 if status else 0}xx"
