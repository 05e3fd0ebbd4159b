"""fleetbreaker's library: one circuit breaker per upstream, in Redis, for the whole fleet.

>>> from breaker import CircuitBreaker, CircuitOpenError, RetryPolicy
>>> cb = CircuitBreaker("inventory", failure_threshold=5, reset_timeout=10.0)
>>> retry = RetryPolicy(attempts=3, deadline=10.0).bind(cb)
"""

from __future__ import annotations

from importlib import metadata as _metadata

from ._breaker import CircuitBreaker
from ._bulkhead.bulkhead import Bulkhead
from ._bulkhead.config import AdaptiveLimit, BulkheadConfig
from ._bulkhead.lease import Lease
from ._bulkhead.wire import BulkheadSnapshot
from ._clock import Clock
from ._config import BreakerConfig, BreakerSettings
from ._decisions.permit import AsyncPermit, Permit
from ._exceptions import (
    BackendUnavailableError,
    BreakerError,
    BulkheadFullError,
    CircuitOpenError,
    ConfigurationError,
    FallbackError,
    PermitSettledError,
)
from ._fallback import Fallback, FallbackGuard, FallbackKind, FallbackReason
from ._keys import BreakerKeys, breaker_channel, escape_name, events_channel, unescape_name
from ._listeners import BreakerListener
from ._models import (
    BreakerSnapshot,
    BudgetVerdict,
    OutcomeEvent,
    SettingsConflict,
    TransitionEvent,
)
from ._operator import BreakerOperator
from ._retry.budget import RetryBudget
from ._retry.delivery import ATTEMPTS_EXTENSION, STOPPED_EXTENSION, attempts_of
from ._retry.operation import current_attempt
from ._retry.rules import (
    IDEMPOTENT_METHODS,
    RETRY_EXCEPTIONS,
    RETRY_STATUSES,
    Attempt,
    RetryDetails,
    RetryHook,
    parse_retry_after,
)
from ._retry.runner import Retrier, RetryPolicy
from ._store.follower import EventFollower
from ._store.urls import redis_from_url
from ._transport import (
    HTTP_RETRY_EXCEPTIONS,
    RETRY_EXTENSION,
    ResilientTransport,
    SyncResilientTransport,
    is_server_error,
    origin_of,
)
from ._types import STATES, CallOutcome, Outcome, State

try:  # one source of truth: pyproject.toml's, as installed
    __version__ = _metadata.version("fleetbreaker")
except _metadata.PackageNotFoundError:  # a checkout put on sys.path, never installed
    __version__ = "0+unknown"

__all__ = [
    "ATTEMPTS_EXTENSION",
    "HTTP_RETRY_EXCEPTIONS",
    "IDEMPOTENT_METHODS",
    "RETRY_EXCEPTIONS",
    "RETRY_EXTENSION",
    "RETRY_STATUSES",
    "STATES",
    "STOPPED_EXTENSION",
    "AdaptiveLimit",
    "AsyncPermit",
    "Attempt",
    "BackendUnavailableError",
    "BreakerConfig",
    "BreakerError",
    "BreakerKeys",
    "BreakerListener",
    "BreakerOperator",
    "BreakerSettings",
    "BreakerSnapshot",
    "BudgetVerdict",
    "Bulkhead",
    "BulkheadConfig",
    "BulkheadFullError",
    "BulkheadSnapshot",
    "CallOutcome",
    "CircuitBreaker",
    "CircuitOpenError",
    "Clock",
    "ConfigurationError",
    "EventFollower",
    "Fallback",
    "FallbackError",
    "FallbackGuard",
    "FallbackKind",
    "FallbackReason",
    "Lease",
    "Outcome",
    "OutcomeEvent",
    "Permit",
    "PermitSettledError",
    "ResilientTransport",
    "Retrier",
    "RetryBudget",
    "RetryDetails",
    "RetryHook",
    "RetryPolicy",
    "SettingsConflict",
    "State",
    "SyncResilientTransport",
    "TransitionEvent",
    "attempts_of",
    "breaker_channel",
    "current_attempt",
    "escape_name",
    "events_channel",
    "is_server_error",
    "origin_of",
    "parse_retry_after",
    "redis_from_url",
    "unescape_name",
]
