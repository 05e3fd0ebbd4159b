"""A bulkhead's settings, checked once: the limit, the lease TTL, the longest wait."""

from __future__ import annotations

import math
from dataclasses import dataclass

from .._exceptions import ConfigurationError

#: The shortest lease TTL: renewals come every quarter of it.
MIN_LEASE_TTL = 0.05


@dataclass(frozen=True, slots=True)
class BulkheadConfig:
    """At most ``limit`` calls in flight fleet-wide (or a limit the fleet learns:
    ``AdaptiveLimit``), each holding a lease that expires
    ``lease_ttl`` seconds after its holder last renewed it; a caller over the limit
    waits up to ``max_wait`` seconds for one (0: refused at once).

    >>> BulkheadConfig(limit=20).lease_ttl
    2.0
    """

    limit: int | AdaptiveLimit = 20
    lease_ttl: float = 2.0
    max_wait: float = 0.0

    def __post_init__(self) -> None:
        limit = self.limit
        if not isinstance(limit, AdaptiveLimit) and (
            isinstance(limit, bool) or not isinstance(limit, int) or limit < 1
        ):
            raise ConfigurationError(
                "limit", f"must be an integer >= 1 or an AdaptiveLimit, got {limit!r}"
            )
        for name, least in (("lease_ttl", MIN_LEASE_TTL), ("max_wait", 0.0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ConfigurationError(name, f"must be a number, got {value!r}")
            if not math.isfinite(value) or value < least:
                raise ConfigurationError(name, f"must be finite and >= {least}, got {value!r}")
            object.__setattr__(self, name, float(value))


@dataclass(frozen=True, slots=True)
class AdaptiveLimit:
    """A limit the fleet learns from its calls' latency, between ``min`` and ``max``,
    from ``initial`` (``lua/fleetbreaker.lua``'s ``tune`` holds the rule).

    Each process sends the mean and the least latency of the calls it made (the time
    each lease was held) every ``interval`` seconds, give or take a quarter at random
    (so that processes do not measure in step); the fleet's one limit moves towards
    ``limit x gradient + queue``, ``gradient = tolerance x least seen / mean`` within
    [0.5, 1], by ``smoothing`` of the way each time.

    >>> AdaptiveLimit(min=4, max=200, initial=20).tolerance
    1.1
    """

    min: int = 4
    max: int = 200
    initial: int = 20
    tolerance: float = 1.1
    smoothing: float = 0.2
    queue: float = 1.0
    interval: float = 0.25

    def __post_init__(self) -> None:
        for name in ("min", "max", "initial"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigurationError(name, f"must be an integer >= 1, got {value!r}")
        if not self.min <= self.initial <= self.max:
            raise ConfigurationError(
                "initial",
                f"must be within min..max ({self.min}..{self.max}), got {self.initial}",
            )
        for name, low, high in (
            ("tolerance", 1.0, 10.0),
            ("smoothing", 0.0, 1.0),
            ("queue", 0.0, 1000.0),
            ("interval", 0.01, 60.0),
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ConfigurationError(name, f"must be a number, got {value!r}")
            if not math.isfinite(value) or not low <= value <= high:
                raise ConfigurationError(name, f"must be within {low:g}..{high:g}, got {value!r}")
            object.__setattr__(self, name, float(value))
