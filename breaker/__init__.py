"""fleetbreaker's library: one circuit breaker per upstream, in Redis, for the whole fleet.

>>> from breaker import CircuitBreaker, CircuitOpenError, RetryPolicy
>>> cb = CircuitBreaker("inventory", failure_threshold=5, reset_timeout=10.0)
>>> retry = RetryPolicy(attempts=3, deadline=10.0).bind(cb)
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
from ._policy import (
    IDEMPOTENT_METHODS,
    RETRY_EXCEPTIONS,
    RETRY_STATUSES,
    Attempt,
    RetryBudget,
    RetryDetails,
    RetryHook,
    RetryPolicy,
    parse_retry_after,
)
from ._protocol import STATES, BreakerSnapshot, BudgetVerdict, TransitionEvent
from ._retrying import ATTEMPTS_EXTENSION, Retrier, attempts_of, current_attempt
from ._transport import (
    RETRY_EXTENSION,
    ResilientTransport,
    SyncResilientTransport,
    is_server_error,
    origin_of,
)

__all__ = [
    "ATTEMPTS_EXTENSION",
    "IDEMPOTENT_METHODS",
    "RETRY_EXCEPTIONS",
    "RETRY_EXTENSION",
    "RETRY_STATUSES",
    "STATES",
    "Attempt",
    "BackendUnavailableError",
    "BreakerConfig",
    "BreakerError",
    "BreakerKeys",
    "BreakerSettings",
    "BreakerSnapshot",
    "BudgetVerdict",
    "CircuitBreaker",
    "CircuitOpenError",
    "ConfigurationError",
    "ResilientTransport",
    "Retrier",
    "RetryBudget",
    "RetryDetails",
    "RetryHook",
    "RetryPolicy",
    "SyncResilientTransport",
    "TransitionEvent",
    "attempts_of",
    "current_attempt",
    "escape_name",
    "events_channel",
    "is_server_error",
    "origin_of",
    "parse_retry_after",
]
