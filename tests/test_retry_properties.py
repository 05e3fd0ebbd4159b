"""Properties of the retry decisions, for any run of outcomes: hypothesis drives the
runner's generator directly, with a ``ManualClock`` and attempts that take time."""

from __future__ import annotations

from dataclasses import dataclass

import httpx
from hypothesis import example, given, settings
from hypothesis import strategies as st

from breaker import RetryPolicy
from breaker._retry.operation import _Discard, _operation, _Outcome, _Try, _Wait
from breaker.testing import ManualClock

REQUEST = httpx.Request("GET", "http://upstream.test/")
KINDS = ["refused", "unavailable", "busy", "not_found", "bug", "ok"]
RETRYABLE = {"refused", "unavailable", "busy"}
EPSILON = 1e-6


def outcome_of(kind: str, retry_after: int) -> _Outcome:
    if kind == "refused":
        return _Outcome(None, ConnectionError("refused"))
    if kind == "bug":
        return _Outcome(None, TypeError("bug"))
    status = {"unavailable": 503, "busy": 429, "not_found": 404, "ok": 200}[kind]
    headers = {"Retry-After": str(retry_after)} if kind == "busy" else {}
    return _Outcome(httpx.Response(status, headers=headers, request=REQUEST), None)


@dataclass
class Run:
    attempts: int
    started: float
    ended: float
    # The wait after each attempt that had one, by attempt number (no wait of 0 is
    # yielded: with no backoff, a retry follows at once).
    waits: dict[int, float]
    timeouts: list[float | None]
    final: _Outcome


def run(policy: RetryPolicy, kinds: list[str], durations: list[float], retry_after: int) -> Run:
    clock = ManualClock()
    started = clock.monotonic()
    steps = _operation(policy, "model", clock, guarded=False, budgeted=False, repeatable=None)
    step = next(steps)
    tries: list[_Outcome] = []
    waits: dict[int, float] = {}
    timeouts: list[float | None] = []
    while True:
        reply = None
        if isinstance(step, _Try):
            assert step.attempt.number == len(tries) + 1
            timeouts.append(step.attempt.timeout)
            took = durations[len(tries) % len(durations)]
            # Real I/O ends at its timeout, as the async runner and transports make it.
            if step.attempt.timeout is not None:
                took = min(took, step.attempt.timeout)
            clock.advance(took)
            reply = outcome_of(kinds[min(len(tries), len(kinds) - 1)], retry_after)
            tries.append(reply)
        elif isinstance(step, _Wait):
            assert len(tries) not in waits
            waits[len(tries)] = step.seconds
            clock.sleep(step.seconds)
        else:
            assert isinstance(step, _Discard)
        try:
            step = steps.send(reply)
        except StopIteration as done:
            final, attempts, stopped_by = done.value
            if stopped_by is not None:  # it gave up only on what it wanted to retry
                assert policy.wants_retry(tries[-1].cause)
            assert final is tries[-1]
            return Run(attempts, started, clock.monotonic(), waits, timeouts, final)


policies = st.builds(
    RetryPolicy,
    attempts=st.integers(1, 6),
    backoff=st.sampled_from([0.0, 0.1, 0.5, 2.0]),
    max_backoff=st.sampled_from([0.5, 5.0]),
    deadline=st.none() | st.floats(0.5, 30.0),
    per_try_timeout=st.none() | st.floats(0.05, 5.0),
    max_retry_after=st.sampled_from([1.0, 60.0]),
)
kinds = st.lists(st.sampled_from(KINDS), min_size=1, max_size=8)
durations = st.lists(st.floats(0.0, 10.0), min_size=1, max_size=8)


@settings(max_examples=400, deadline=None, derandomize=True)
# No backoff: the retry after the refusal follows at once, and the only wait is the
# Retry-After of the second attempt (a case the first version of this test misread).
@example(
    policy=RetryPolicy(attempts=3, backoff=0.0, max_backoff=0.5, max_retry_after=1.0),
    kinds=["refused", "busy"],
    durations=[0.0],
    retry_after=1,
)
@given(policy=policies, kinds=kinds, durations=durations, retry_after=st.integers(0, 120))
def test_any_run_keeps_the_policys_promises(
    policy: RetryPolicy, kinds: list[str], durations: list[float], retry_after: int
) -> None:
    outcome = run(policy, kinds, durations, retry_after)

    # Never more attempts than allowed, and a wait only between two attempts.
    assert 1 <= outcome.attempts <= policy.attempts
    assert len(outcome.waits) <= outcome.attempts - 1

    # The deadline covers attempts and waits alike.
    if policy.deadline is not None:
        assert outcome.ended - outcome.started <= policy.deadline + EPSILON

    # Each attempt's timeout is the per-try timeout, within what the deadline leaves.
    for timeout in outcome.timeouts:
        if policy.per_try_timeout is not None:
            assert timeout is not None
            assert timeout <= policy.per_try_timeout
        if policy.deadline is not None:
            assert timeout is not None
            assert 0 < timeout <= policy.deadline + EPSILON  # the clock is at 1.7e9 s

    # Every wait is a jittered backoff within its ceiling, or a capped Retry-After.
    for number, wait in outcome.waits.items():
        kind = kinds[min(number - 1, len(kinds) - 1)]
        if kind == "busy":
            assert wait == min(float(retry_after), policy.max_retry_after) or (
                retry_after == 0 and wait == 0.0
            )
        else:
            assert 0.0 <= wait <= policy.backoff_ceiling(number) + EPSILON

    # The run stops at the first outcome that is not worth retrying...
    seen = [kinds[min(i, len(kinds) - 1)] for i in range(outcome.attempts)]
    assert all(kind in RETRYABLE for kind in seen[:-1])
    # ...or, on a retryable one, only for lack of attempts or of time.
    if seen[-1] in RETRYABLE and outcome.attempts < policy.attempts:
        assert policy.deadline is not None
