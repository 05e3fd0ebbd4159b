"""The fleet-wide retry budget: its settings, and the operation that spends from it.

Retries may add ``ratio`` of the first attempts that every process made through the
breaker in its window, plus a floor so that a quiet service can still retry: a token
bucket refilled at ``min_retries_per_second`` that holds a quarter of a second of it
(at least one token). Both live in the breaker's window hash (the library's ``budget``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from .._decisions.engine import Engine
from .._decisions.steps import Steps
from .._exceptions import BackendUnavailableError, ConfigurationError
from .._models import BudgetVerdict
from .._store.wire import budget_args, decode_budget


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryBudget:
    """A cap on retries shared by the whole fleet, kept in the breaker's window.

    N first attempts that fail within ``d`` seconds get at most
    ``ratio * N + max(1, rate / 4) + rate * d`` retries (``rate`` is
    ``min_retries_per_second``): the floor adds its rate, never a whole window's worth
    at once.
    """

    ratio: float = 0.2
    min_retries_per_second: float = 10.0

    def __post_init__(self) -> None:
        for name in ("ratio", "min_retries_per_second"):
            value = getattr(self, name)
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not math.isfinite(value)
                or value < 0
            ):
                raise ConfigurationError(name, f"must be a number >= 0, got {value!r}")


def spending(engine: Engine, budget: RetryBudget) -> Steps[BudgetVerdict]:
    """Take one retry from the fleet's budget of ``engine``'s breaker (1 round trip).

    While Redis is away, ``fail_closed`` refuses every retry and ``fail_open``
    budgets against the fallback's window, which counts this process's calls."""
    now = engine.clock.epoch_ms()

    def args(offer: bool) -> list[Any]:
        return budget_args(
            engine.wired,
            ratio=budget.ratio,
            min_retries_per_second=budget.min_retries_per_second,
            now_ms=now,
            offer=offer,
        )

    try:
        raw = yield from engine.settings.ask("shared", "budget", args)
    except BackendUnavailableError:
        if engine.config.on_backend_error == "fail_closed":
            return BudgetVerdict(granted=False, retries=0, requests=0, limit=0.0, tokens=0.0)
        raw = yield from engine.settings.ask("local", "budget", args)
    return decode_budget(raw)
