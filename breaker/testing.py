"""Helpers for testing code that uses fleetbreaker: drive time instead of sleeping.

>>> from breaker import CircuitBreaker
>>> from breaker.testing import ManualClock
>>> clock = ManualClock()
>>> cb = CircuitBreaker("testing-doc", clock=clock, reset_timeout=30.0)
>>> clock.advance(30.0)   # the breaker's open time passes without a sleep

``set_testing(True)`` removes every retry wait of code that runs on the real clock,
like stamina's switch of the same name.
"""

from __future__ import annotations

from ._clock import Clock, ManualClock, SystemClock, set_testing

__all__ = ["Clock", "ManualClock", "SystemClock", "set_testing"]
