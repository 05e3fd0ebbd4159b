"""The Lua state machine, held against a small pure-Python reference model.

Hypothesis runs random sequences of call admissions, outcomes (in any order, so calls
overlap), clock advances and operator actions; after every step the breaker's
snapshot must equal the model's state. Time moves in whole seconds from a whole
start, so the local view's float deadlines and the scripts' ms agree exactly.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import ClassVar

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
from breaker.testing import ManualClock

CONFIG: BreakerSettings = {
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


@dataclass
class Reference:
    """The breaker's rules, written plainly, with no Redis and no optimisation."""

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
        duration = min(10_000 * 2**self.reopens, 40_000)
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
            if self.failures >= 3 or (calls >= 4 and failed >= 0.5 * calls):
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
    client: redis.Redis | None = None
    # What the run reached, across examples: the test asserts it covered every state
    # and every way in, so a model test that never trips cannot pass quietly.
    visited: ClassVar[set[str]]

    def __init__(self) -> None:
        super().__init__()
        self.clock = ManualClock(start=1_000_000.0)
        self.cb = CircuitBreaker(
            f"model-{uuid.uuid4().hex}", redis=self.client, clock=self.clock, **CONFIG
        )
        self.model = Reference()
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
    max_examples=200,
    derandomize=True,  # the coverage assertion below must never depend on luck
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


@pytest.mark.slow
def test_embedded_lua_agrees_with_the_reference_model() -> None:
    class Embedded(BreakerMachine):
        client = None
        visited: ClassVar[set[str]] = set()

    run_state_machine_as_test(Embedded, settings=RUN)
    assert MUST_VISIT - Embedded.visited == set()


@pytest.mark.slow
def test_redis_lua_agrees_with_the_reference_model(sync_redis: redis.Redis) -> None:
    class OnRedis(BreakerMachine):
        client = sync_redis
        visited: ClassVar[set[str]] = set()

    run_state_machine_as_test(OnRedis, settings=RUN)
    assert MUST_VISIT - OnRedis.visited == set()
