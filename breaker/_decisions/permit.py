"""The permit: the one primitive every guard is built on.

``cb.acquire()`` (``await cb.aacquire()``) asks the breaker for one call; it raises
``CircuitOpenError`` or returns a permit, which the caller settles once, when the
call's outcome is known: ``success()``, ``failure(exc)``, ``ignore()``, or
``settle(exc, result)`` to let the breaker's own rules judge. ``with cb``,
``cb.call``, the decorator, the retrier and the httpx transports all work this way;
a permit is how code that cannot be wrapped in a function is guarded::

    permit = cb.acquire()
    try:
        response = send(request)
    except Exception as exc:
        permit.failure(exc)
        raise
    permit.settle(result=response)      # a 5xx counts as a failure, by the predicate

A permit settles once: a second settle raises ``PermitSettledError``. A permit
dropped without settling counts as nothing, and gives its half-open trial lease back
on the breaker's next call (or when the breaker closes), not only when the lease
expires.
"""

from __future__ import annotations

import threading

from .._exceptions import PermitSettledError
from .._types import Outcome
from .core import Ticket
from .drive import Driver
from .engine import Engine
from .telling import describe


class _Settling:
    """What both permits share: the admission they hold, settled at most once."""

    def __init__(self, engine: Engine, driver: Driver, ticket: Ticket) -> None:
        self._engine = engine
        self._driver = driver
        self._ticket: Ticket | None = ticket
        self._lock = threading.Lock()

    @property
    def name(self) -> str:
        """The breaker's name."""
        return self._engine.name

    @property
    def trial(self) -> bool:
        """Whether this call is a half-open trial: it holds one of the fleet's leases."""
        return self._ticket is not None and bool(self._ticket.lease_id)

    @property
    def settled(self) -> bool:
        return self._ticket is None

    def _take(self) -> Ticket:
        with self._lock:
            ticket, self._ticket = self._ticket, None
        if ticket is None:
            raise PermitSettledError(self._engine.name)
        return ticket

    def _judge(self, exc: BaseException | None, result: object) -> tuple[Outcome, str]:
        return self._engine.config.classify(exc, result), describe(exc, result)

    def __del__(self) -> None:
        ticket = getattr(self, "_ticket", None)
        if ticket is not None:
            self._engine.abandon(ticket)

    def __repr__(self) -> str:
        state = "settled" if self.settled else "trial" if self.trial else "open"
        return f"<{type(self).__name__} {self.name!r} {state}>"


class Permit(_Settling):
    """One admitted call of a breaker on a sync client (or the embedded backend)."""

    def success(self) -> None:
        """The call succeeded."""
        self._driver.run(self._engine.settling(self._take(), "success"))

    def failure(self, exc: BaseException | None = None) -> None:
        """The call failed (``exc`` names why, in outcome events)."""
        self._driver.run(self._engine.settling(self._take(), "failure", describe(exc)))

    def ignore(self) -> None:
        """The call counts as nothing (a trial lease is given back)."""
        self._driver.run(self._engine.settling(self._take(), "ignored"))

    def settle(self, exc: BaseException | None = None, result: object = None) -> Outcome:
        """Count a call that raised ``exc`` (or returned ``result``) as the breaker's
        settings judge it (``BreakerConfig.classify``); returns how it counted."""
        outcome, reason = self._judge(exc, result)
        self._driver.run(self._engine.settling(self._take(), outcome, reason))
        return outcome


class AsyncPermit(_Settling):
    """One admitted call of a breaker on an asyncio client: ``Permit``, awaited."""

    async def success(self) -> None:
        """The call succeeded."""
        await self._driver.arun(self._engine.settling(self._take(), "success"))

    async def failure(self, exc: BaseException | None = None) -> None:
        """The call failed (``exc`` names why, in outcome events)."""
        await self._driver.arun(self._engine.settling(self._take(), "failure", describe(exc)))

    async def ignore(self) -> None:
        """The call counts as nothing (a trial lease is given back)."""
        await self._driver.arun(self._engine.settling(self._take(), "ignored"))

    async def settle(self, exc: BaseException | None = None, result: object = None) -> Outcome:
        """``Permit.settle``, awaited."""
        outcome, reason = self._judge(exc, result)
        await self._driver.arun(self._engine.settling(self._take(), outcome, reason))
        return outcome
