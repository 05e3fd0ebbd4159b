"""Breaker settings: one frozen value, validated once, at construction."""

from __future__ import annotations

import asyncio
import math
import re
import socket
from collections.abc import Callable
from dataclasses import dataclass, fields
from datetime import timedelta
from typing import Any, TypedDict

from ._exceptions import ConfigurationError
from ._keys import check_prefix
from ._types import BackendErrorPolicy, Outcome, ScriptMode

Seconds = float | timedelta

# The window is summed in one script on every recorded call: keep it O(small).
MAX_BUCKETS = 600


@dataclass(frozen=True, slots=True, kw_only=True)
class BreakerConfig:
    """How one breaker trips, recovers, classifies outcomes and talks to Redis.

    Durations are seconds (a ``timedelta`` is accepted by ``CircuitBreaker``).

    >>> BreakerConfig(failure_threshold=3, reset_timeout=30.0).failure_threshold
    3
    """

    #: Consecutive failures that open a closed breaker.
    failure_threshold: int = 5
    #: Seconds an opened breaker stays open before it admits a trial.
    reset_timeout: float = 10.0
    #: Trial calls allowed at once, across the whole fleet, while half-open.
    half_open_max_calls: int = 1
    #: Trial successes that close a half-open breaker.
    success_threshold: int = 1
    #: Seconds after which a trial lease expires, so that a dead holder frees its slot.
    half_open_lease: float = 10.0
    #: Open when failed / calls over the window reaches this (0..1); None: off.
    failure_rate_threshold: float | None = None
    #: A call that takes at least this many seconds is slow; None: off.
    slow_call_duration: float | None = None
    #: Open when slow / calls over the window reaches this (0..1); None: off.
    slow_call_rate_threshold: float | None = None
    #: Calls the window must hold before a rate can trip.
    minimum_calls: int = 10
    #: Seconds of the sliding window.
    window: float = 10.0
    #: Seconds of one window bucket: the window is window / window_bucket counters.
    window_bucket: float = 1.0
    #: Upper bound of the open time when consecutive re-opens grow it; None: no growth.
    reset_timeout_max: float | None = None
    #: Growth factor of the open time per consecutive re-open.
    reset_timeout_multiplier: float = 2.0
    #: Up to this fraction of the open time is added at random, to spread the trials.
    reset_timeout_jitter: float = 0.0
    #: Exceptions that count as failures.
    record_exceptions: tuple[type[BaseException], ...] = (Exception,)
    #: Exceptions that count as nothing, even when they match ``record_exceptions``.
    ignore_exceptions: tuple[type[BaseException], ...] = ()
    #: Called with a call's result: True makes the result count as a failure.
    failure_predicate: Callable[[Any], bool] | None = None
    #: What a call does when Redis cannot be reached.
    on_backend_error: BackendErrorPolicy = "fail_open"
    #: Seconds a Redis command may take before the backend counts as unavailable.
    backend_timeout: float = 0.25
    #: How Redis runs the library: "auto" (FUNCTION, or EVALSHA where the server
    #: refuses it: Redis < 7, an ACL), "functions" or "eval".
    script_mode: ScriptMode = "auto"
    #: Seconds between flushes of locally counted successes; None: every call records.
    batch_interval: float | None = None
    #: Prefix of every Redis key and of the events channel.
    prefix: str = "breaker"
    #: Seconds every key lives after its last write, so abandoned breakers vanish.
    key_ttl: float = 7 * 24 * 3600.0
    #: Distinct voters (instances) whose failures a trip needs besides its condition:
    #: an integer >= 1, or a fraction in (0, 1), that share of the voters live in the
    #: window, rounded up. 1: no quorum (any process's failures count alone). With a
    #: quorum, a process whose own failures alone would trip isolates itself instead.
    quorum: float = 1
    #: This process's voter: its instance, shared by the workers of one replica so
    #: that one node never makes a quorum by itself. None: the host name.
    voter: str | None = None

    def __post_init__(self) -> None:
        _at_least("failure_threshold", self.failure_threshold, 1)
        _at_least("half_open_max_calls", self.half_open_max_calls, 1)
        _at_least("success_threshold", self.success_threshold, 1)
        _at_least("minimum_calls", self.minimum_calls, 1)
        for name in (
            "reset_timeout",
            "half_open_lease",
            "window",
            "window_bucket",
            "backend_timeout",
            "key_ttl",
        ):
            check_seconds(name, getattr(self, name))
        for name in ("slow_call_duration", "batch_interval", "reset_timeout_max"):
            if getattr(self, name) is not None:
                check_seconds(name, getattr(self, name))
        for name in ("failure_rate_threshold", "slow_call_rate_threshold"):
            if getattr(self, name) is not None:
                _rate(name, getattr(self, name), allow_zero=False)
        _rate("reset_timeout_jitter", self.reset_timeout_jitter, allow_zero=True)
        if (self.slow_call_rate_threshold is None) != (self.slow_call_duration is None):
            raise ConfigurationError(
                "slow_call_rate_threshold",
                "needs slow_call_duration, and slow_call_duration needs it",
            )
        if self.window < self.window_bucket:
            raise ConfigurationError("window", "is shorter than its bucket (window_bucket)")
        if self.window / self.window_bucket > MAX_BUCKETS:
            raise ConfigurationError("window", f"holds more than {MAX_BUCKETS} buckets")
        multiplier = self.reset_timeout_multiplier
        if (
            isinstance(multiplier, bool)
            or not isinstance(multiplier, int | float)
            or not (1 <= multiplier < math.inf)
        ):
            raise ConfigurationError("reset_timeout_multiplier", "must be at least 1")
        if self.reset_timeout_max is not None and self.reset_timeout_max < self.reset_timeout:
            raise ConfigurationError("reset_timeout_max", "is shorter than reset_timeout")
        longest = max(self.window, self.reset_timeout_max or self.reset_timeout)
        if self.key_ttl <= longest:
            raise ConfigurationError("key_ttl", "must outlive the window and the open time")
        if self.on_backend_error not in ("fail_open", "fail_closed"):
            raise ConfigurationError("on_backend_error", "must be 'fail_open' or 'fail_closed'")
        if self.script_mode not in ("auto", "functions", "eval"):
            raise ConfigurationError("script_mode", "must be 'auto', 'functions' or 'eval'")
        for name in ("record_exceptions", "ignore_exceptions"):
            value = getattr(self, name)
            if not isinstance(value, tuple) or not all(
                isinstance(kind, type) and issubclass(kind, BaseException) for kind in value
            ):
                raise ConfigurationError(name, "must be a tuple of exception types")
        if self.failure_predicate is not None and not callable(self.failure_predicate):
            raise ConfigurationError("failure_predicate", "must be callable")
        check_prefix(self.prefix)
        check_quorum(self.quorum)
        if self.voter is not None:
            check_voter(self.voter)

    def classify(self, error: BaseException | None, result: object = None) -> Outcome:
        """How a call that raised ``error`` (or returned ``result``) counts: success,
        failure, or ignored (counts as nothing), by these settings. The one place that
        judges an outcome: every guard, the transports and the gateway's metrics take
        its verdict.

        >>> BreakerConfig(record_exceptions=(OSError,)).classify(ValueError())
        'ignored'
        """
        if error is not None:
            if isinstance(error, asyncio.CancelledError | KeyboardInterrupt | SystemExit):
                return "ignored"
            if isinstance(error, self.ignore_exceptions):
                return "ignored"
            return "failure" if isinstance(error, self.record_exceptions) else "ignored"
        if self.failure_predicate is not None and self.failure_predicate(result):
            return "failure"
        return "success"

    @property
    def buckets(self) -> int:
        """How many buckets the window holds."""
        return math.ceil(self.window / self.window_bucket - 1e-9)


class BreakerSettings(TypedDict, total=False):
    """The keyword arguments of ``CircuitBreaker``: ``BreakerConfig``'s fields,
    with durations as seconds or ``timedelta``."""

    failure_threshold: int
    reset_timeout: Seconds
    half_open_max_calls: int
    success_threshold: int
    half_open_lease: Seconds
    failure_rate_threshold: float | None
    slow_call_duration: Seconds | None
    slow_call_rate_threshold: float | None
    minimum_calls: int
    window: Seconds
    window_bucket: Seconds
    reset_timeout_max: Seconds | None
    reset_timeout_multiplier: float
    reset_timeout_jitter: float
    record_exceptions: tuple[type[BaseException], ...]
    ignore_exceptions: tuple[type[BaseException], ...]
    failure_predicate: Callable[[Any], bool] | None
    on_backend_error: BackendErrorPolicy
    backend_timeout: Seconds
    script_mode: ScriptMode
    batch_interval: Seconds | None
    prefix: str
    key_ttl: Seconds
    quorum: float
    voter: str | None


def make_config(settings: BreakerSettings) -> BreakerConfig:
    """Build a ``BreakerConfig`` from keyword settings, turning ``timedelta`` into seconds."""
    known = {field.name for field in fields(BreakerConfig)}
    for key in settings:
        if key not in known:
            raise ConfigurationError(key, "is not a breaker setting")
    values: dict[str, Any] = {
        key: value.total_seconds() if isinstance(value, timedelta) else value
        for key, value in settings.items()
    }
    return BreakerConfig(**values)


def _at_least(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigurationError(name, f"must be an integer >= {minimum}, got {value!r}")


def check_seconds(name: str, value: object, *, zero: bool = False) -> float:
    """``value`` as seconds if it is a finite number, positive (or also 0, with
    ``zero``); else the error that names ``name``. Shared by the breaker's and the
    retry policy's settings."""
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value < 0
        or (value == 0 and not zero)
    ):
        kind = "a number of seconds >= 0" if zero else "a positive number of seconds"
        raise ConfigurationError(name, f"must be {kind}, got {value!r}")
    return float(value)


def check_quorum(value: object) -> None:
    """An integer >= 1 (a float that is one too), or a fraction strictly between 0 and 1."""
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or not (0 < value < 1 or (value >= 1 and value == int(value)))
    ):
        raise ConfigurationError(
            "quorum", f"must be an integer >= 1 or a fraction between 0 and 1, got {value!r}"
        )


_VOTER = re.compile(r"[A-Za-z0-9._-]{1,64}")


def check_voter(value: object) -> str:
    """A voter id: 1 to 64 letters, digits, '.', '_' or '-' (a host or instance name)."""
    if not isinstance(value, str) or not _VOTER.fullmatch(value):
        raise ConfigurationError(
            "voter", f"must be 1 to 64 letters, digits, '.', '_' or '-', got {value!r}"
        )
    return value


def host_voter() -> str:
    """The host name as a voter id (characters a voter cannot hold become '-')."""
    name = re.sub(r"[^A-Za-z0-9._-]", "-", socket.gethostname())[:64]
    return name or "host"


def _rate(name: str, value: object, *, allow_zero: bool) -> None:
    low = "0" if allow_zero else "0 (excluded)"
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not (0 <= value <= 1)
        or (value == 0 and not allow_zero)
    ):
        raise ConfigurationError(name, f"must be a rate between {low} and 1, got {value!r}")
