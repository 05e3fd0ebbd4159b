"""The Lua state machine, held against a small pure-Python reference model.

Hypothesis runs random sequences of call admissions, outcomes (in any order, so calls
overlap), clock advances and operator actions; after every step the breaker's
snapshot must equal the model's state. Time moves in whole seconds from a whole
start, so the local view's float deadlines and the scripts' ms agree exactly.

Two configurations run: one with a failure-rate threshold, so that every closed
success takes ``record``'s full path (it weighs the window), and one without rate
thresholds, so that closed successes take ``record_fast``, the hand-optimised path;
both are compared with the same model.

Every lane compares against the model: a real Redis (standalone), a Redis Cluster,
the embedded backend (fakeredis + lupa) and the fallback lane (``LocalEngine`` on
lupa). The fallback lane also counts coverage: it runs a copy of the library
instrumented at every function and every arm of every ``if`` (implicit ``else``
included; tests/support/luacover.py), and fails naming each one the run never
reached, except those in ``NOT_MODELLED``, each with the reason and the test that
reaches it instead (an exemption the run does reach fails too: it is stale). Only
the fallback lane counts because its Lua runtime is this process's own; Redis's
and fakeredis's are not, and the same library runs on each.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import pytest
import redis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from breaker import BreakerSettings, CircuitBreaker, CircuitOpenError, Permit
from breaker._local import LocalEngine
from breaker._scripts import library_source
from breaker.testing import ManualClock
from tests.conftest import use_fallback_lane
from tests.support.luacover import instrument

#: The full path: every closed success weighs the window (a rate may trip).
WITH_RATE: BreakerSettings = {
    "failure_threshold": 3,
    "success_threshold": 2,
    "half_open_max_calls": 2,
    "half_open_lease": 15.0,
    "reset_timeout": 10.0,
    "reset_timeout_max": 40.0,
    "reset_timeout_multiplier": 2.0,
    "failure_rate_threshold": 0.5,
    "minimum_calls": 4,
    "window": 10.0,
    "window_bucket": 1.0,
}
#: No rate threshold: closed successes take record_fast. No growth of the open time.
FAST: BreakerSettings = {**WITH_RATE, "failure_rate_threshold": None, "reset_timeout_max": None}
CONFIGS = {"with_rate": WITH_RATE, "fast": FAST}


@dataclass
class Reference:
    """The breaker's rules, written plainly, with no Redis and no optimisation."""

    rate: float | None
    grows: bool
    state: str = "closed"
    generation: int = 0
    failures: int = 0
    last_failure_at: int = 0
    opened_at: int = 0
    open_until: int = 0
    reopens: int = 0
    trial_successes: int = 0
    leases: dict[str, int] = field(default_factory=dict)
    window: dict[int, list[int]] = field(default_factory=dict)

    def _transition(self, to: str) -> None:
        self.state = to
        self.generation += 1

    def _open(self, now: int) -> None:
        self.reopens = self.reopens + 1 if self.state == "half_open" else 0
        duration = min(10_000 * 2**self.reopens, 40_000) if self.grows else 10_000
        self.opened_at, self.open_until = now, now + duration
        self.trial_successes = 0
        self.leases.clear()
        self._transition("open")

    def _close(self) -> None:
        self.failures = self.reopens = self.trial_successes = self.open_until = 0
        self.window.clear()
        self.leases.clear()
        self._transition("closed")

    def _count(self, now: int, failed: bool) -> None:
        bucket = self.window.setdefault(now // 1000, [0, 0])
        bucket[0] += 1
        bucket[1] += int(failed)

    def _sums(self, now: int) -> tuple[int, int]:
        live = [v for b, v in self.window.items() if b >= now // 1000 - 9]
        return sum(v[0] for v in live), sum(v[1] for v in live)

    def acquire(self, now: int, lease_id: str) -> str:
        if self.state in ("closed", "disabled"):
            return "admit"
        if self.state == "forced_open":
            return "reject"
        if self.state == "open":
            if now < self.open_until:
                return "reject"
            self.trial_successes = 0
            self.leases.clear()
            self._transition("half_open")
        self.leases = {k: v for k, v in self.leases.items() if v > now}
        if len(self.leases) < 2:
            self.leases[lease_id] = now + 15_000
            return "trial"
        return "reject"

    def record(self, now: int, generation: int, lease_id: str, outcome: str) -> None:
        if lease_id:
            held = self.leases.pop(lease_id, None) is not None
            if not (held and self.state == "half_open" and generation == self.generation):
                return
            if outcome == "success":
                self._count(now, failed=False)
                self.trial_successes += 1
                if self.trial_successes >= 2:
                    self._close()
            elif outcome == "failure":
                self._count(now, failed=True)
                self.failures += 1
                self.last_failure_at = now
                self._open(now)
            return
        counting = self.state in ("closed", "disabled")
        if outcome not in ("success", "failure") or not counting:
            return
        if generation != self.generation:
            return
        self._count(now, failed=outcome == "failure")
        if outcome == "success":
            self.failures = 0
        else:
            self.failures += 1
            self.last_failure_at = now
        if self.state == "closed":
            calls, failed = self._sums(now)
            tripped = self.rate is not None and calls >= 4 and failed >= self.rate * calls
            if self.failures >= 3 or tripped:
                self._open(now)

    def control(self, action: str) -> None:
        if action == "reset":
            self.last_failure_at = self.opened_at = 0  # a reset forgets when it failed
            self._close()
            return
        target = {"force_open": "forced_open", "disable": "disabled"}[action]
        if self.state != target:
            self.open_until = self.trial_successes = 0
            self.leases.clear()
            self._transition(target)


class BreakerMachine(RuleBasedStateMachine):
    """Set by each run: how to make a breaker on the lane, and the settings."""

    make: ClassVar[Callable[..., CircuitBreaker]]
    config: ClassVar[BreakerSettings]
    # What the run reached, across examples: the test asserts it covered every state
    # and every way in, so a model test that never trips cannot pass quietly.
    visited: ClassVar[set[str]]

    def __init__(self) -> None:
        super().__init__()
        self.clock = ManualClock(start=1_000_000.0)
        self.cb = type(self).make(f"model-{uuid.uuid4().hex}", clock=self.clock, **self.config)
        config = self.config
        self.model = Reference(
            config["failure_rate_threshold"], grows=bool(config["reset_timeout_max"])
        )
        # Each call in flight: its permit, the generation it was admitted under, and
        # its lease in the model ("" for a normal call).
        self.calls: list[tuple[Permit, int, str]] = []

    def teardown(self) -> None:
        self.cb.close()

    @rule(outcome=st.sampled_from(["failure", "failure", "success", "success", "release"]))
    def call(self, outcome: str) -> None:
        """The common case: a call admitted and finished before anything else happens."""
        if self.admit():
            self.finish(len(self.calls) - 1, outcome)

    @rule()
    def hold(self) -> None:
        """A call that stays in flight while other steps happen."""
        self.admit()

    def admit(self) -> bool:
        placeholder = uuid.uuid4().hex
        generation = self.model.generation
        expected = self.model.acquire(self.clock.epoch_ms(), placeholder)
        if self.model.generation != generation:
            self.visited.add(f"to:{self.model.state}")
        try:
            permit = self.cb.acquire()
        except CircuitOpenError:
            assert expected == "reject"
            self.visited.add(f"reject:{self.model.state}")
            return False
        assert expected == ("trial" if permit.trial else "admit")
        self.calls.append((permit, self.model.generation, placeholder if permit.trial else ""))
        return True

    @precondition(lambda self: self.calls)
    @rule(
        which=st.integers(min_value=0, max_value=10**6),
        outcome=st.sampled_from(["success", "failure", "release"]),
    )
    def finish(self, which: int, outcome: str) -> None:
        permit, admitted_under, lease = self.calls.pop(which % len(self.calls))
        generation = self.model.generation
        self.model.record(self.clock.epoch_ms(), admitted_under, lease, outcome)
        if outcome == "success":
            permit.success()
        elif outcome == "failure":
            permit.failure()
        else:
            permit.ignore()
        if self.model.generation != generation:
            self.visited.add(f"to:{self.model.state}")

    @rule(seconds=st.sampled_from([1, 2, 5, 10, 15, 30]))
    def advance(self, seconds: int) -> None:
        self.clock.advance(seconds)

    @rule(action=st.sampled_from(["reset", "force_open", "disable"]), roll=st.integers(0, 5))
    def operator(self, action: str, roll: int) -> None:
        if roll:  # operators act rarely, or the breaker would seldom trip on its own
            return
        self.model.control(action)
        getattr(self.cb, action)()

    @invariant()
    def agrees_with_the_model(self) -> None:
        self.visited.add(self.model.state)
        now = self.clock.epoch_ms()
        snapshot = self.cb.snapshot()
        model = self.model
        calls, failed = model._sums(now)
        assert (
            snapshot.state,
            snapshot.generation,
            snapshot.failures,
            snapshot.last_failure_at,
            snapshot.open_until,
            snapshot.reopens,
            snapshot.trial_successes,
        ) == (
            model.state,
            model.generation,
            model.failures,
            model.last_failure_at,
            model.open_until,
            model.reopens,
            model.trial_successes,
        )
        assert snapshot.half_open_leases == sum(1 for v in model.leases.values() if v > now)
        assert (snapshot.window_calls, snapshot.window_failures) == (calls, failed)


RUN = settings(
    max_examples=100,
    derandomize=True,  # the coverage assertions below must never depend on luck
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


MUST_VISIT = {
    "closed",
    "open",
    "half_open",
    "forced_open",
    "disabled",
    "to:open",
    "to:half_open",
    "to:closed",
    "reject:open",
    "reject:half_open",
}

#: What the model never does, by coverage point (tests/support/luacover.py names),
#: with what reaches it instead. A whole function is named by "function <name>" and
#: exempts every point in it.
NOT_MODELLED: dict[str, str] = {
    "function budget": "the retry budget, no state of the breaker: test_budget.py",
    "window_sums: if bucket == nil": "the budget's floor:* fields: test_budget.py",
    "time_now: none of if given ~= ''": "Redis TIME: the model injects time",
    "transition: if string.find(channel, '{', 1, true)": (
        "SPUBLISH, a Cluster's channel: the Cluster lane above runs it"
    ),
    "transition: none of if channel ~= ''": "no channel: an operator tool on a bare hash",
    "advance: if created_at > s.created_at or (created_at == s.created_at and generatio": (
        "a store behind the fleet (a failover lost writes): test_versions.py"
    ),
    "as_reply: if value == nil": "a reply missing a field, a bug: test_contract.py",
    "control: if targets[action] == nil": "an unknown action: the wire never sends one",
    "acquire: if c.now < s.open_until": (
        "an open breaker's own process rejects from its view: another process's "
        "first call does (test_state_machine.py)"
    ),
    # The store lost (flush, restart, TTL), which the model does not do:
    # test_settings_stored.py and test_versions.py.
    "load: if c.stored == '' and c.digest ~= ''": "a lost store",
    "function unconfigured": "a lost store",
    "acquire: if not load(c)": "a lost store",
    "record: if not load(c)": "a lost store",
    "control: if not load(c)": "a lost store",
    "record: if not c.existed": "a lost store",
    "record: if tonumber(created_at) ~= c.s.created_at": "a lost store",
    # Durations and batching, which the model does not do: test_state_machine.py's
    # slow-call tests, test_round_trips.py's batching ones.
    "count: if slows > 0": "slow calls",
    "record_full: if cfg.slow_call_rate_threshold >= 0 and sums.s >= cfg.slow_call_rate_thr": (
        "slow calls"
    ),
    "record_full: if successes > 0 and counting and generation == s.generation": "batching",
    "record_full: if s.last_failure_at == seen": "batching",
    "record_full: none of if s.last_failure_at == seen": "batching",
    "record_fast: none of if b ~= '0'": "batching",
}


def run_model(make: Callable[..., CircuitBreaker]) -> None:
    """Both configurations on one lane; every state and way in must be visited."""
    visited: set[str] = set()
    for label, config in CONFIGS.items():
        machine = type(
            f"Model_{label}",
            (BreakerMachine,),
            {"make": staticmethod(make), "config": config, "visited": visited},
        )
        run_state_machine_as_test(machine, settings=RUN)
    assert MUST_VISIT - visited == set()


def unreached(points: dict[str, int]) -> list[str]:
    """The points never reached that no exemption covers, as "name (line n)"."""
    exempt = {
        name.removeprefix("function ") for name in NOT_MODELLED if name.startswith("function ")
    }
    return [
        f"{name} (line {line})"
        for name, line in points.items()
        if name not in NOT_MODELLED and name.split(":")[0].removeprefix("function ") not in exempt
    ]


@pytest.mark.slow
def test_redis_lua_agrees_with_the_reference_model(sync_redis: redis.Redis) -> None:
    run_model(lambda name, **kw: CircuitBreaker(name, redis=sync_redis, **kw))


@pytest.mark.slow
def test_cluster_lua_agrees_with_the_reference_model(local_cluster: Any) -> None:
    client = local_cluster.client()
    try:
        run_model(lambda name, **kw: CircuitBreaker(name, redis=client, **kw))
    finally:
        client.close()


@pytest.mark.slow
def test_embedded_lua_agrees_with_the_reference_model() -> None:
    run_model(lambda name, **kw: CircuitBreaker(name, **kw))


@pytest.fixture
def instrumented(monkeypatch: pytest.MonkeyPatch) -> tuple[LocalEngine, Any]:
    source, points = instrument(library_source())
    engine = LocalEngine(source)
    assert use_fallback_lane(monkeypatch, engine) is engine
    return engine, points


@pytest.mark.slow
def test_fallback_lua_agrees_with_the_reference_model_and_reaches_every_branch(
    instrumented: tuple[LocalEngine, Any],
) -> None:
    engine, points = instrumented
    run_model(lambda name, **kw: CircuitBreaker(name, **kw))
    reached = set(engine.lua_global("COVERED").keys())
    never = points.unreached(reached)
    missing = unreached(never)
    assert not missing, "never reached by the model test:\n" + "\n".join(missing)
    stale = [name for name in NOT_MODELLED if name not in never]
    assert not stale, "exempt, but reached (or gone): " + ", ".join(stale)
