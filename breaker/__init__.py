"""fleetbreaker's library: one circuit breaker per upstream, in Redis, for the whole fleet.

>>> from breaker import CircuitBreaker, CircuitOpenError
>>> cb = CircuitBreaker("inventory", failure_threshold=5, reset_timeout=10.0)
"""

from __future__ import annotations

from ._breaker import CircuitBreaker
from ._config import BreakerConfig, BreakerSettings
from ._exceptions import (
    BackendUnavailableError,
    BreakerError,
    CircuitOpenError,
    ConfigurationError,
)
from ._keys import BreakerKeys, escape_name, events_channel
from ._protocol import BreakerSnapshot, TransitionEvent

__all__ = [
    "BackendUnavailableError",
    "BreakerConfig",
    "BreakerError",
    "BreakerKeys",
    "BreakerSettings",
    "BreakerSnapshot",
    "CircuitBreaker",
    "CircuitOpenError",
    "ConfigurationError",
    "TransitionEvent",
    "escape_name",
    "events_channel",
]
