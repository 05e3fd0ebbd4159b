"""A lease: one call's place in a bulkhead, given back once."""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

from .._decisions.steps import Lane


class _Holder(Protocol):
    """What a lease needs of its bulkhead."""

    def _holds(self, lease: Lease) -> bool: ...

    def _settle(self, lease: Lease) -> bool: ...

    def _drive(self, steps: Any) -> Any: ...

    async def _adrive(self, steps: Any) -> Any: ...

    def _giving(self, lease: Lease) -> Any: ...


class Lease:
    """One call's place in the bulkhead. ``release`` gives it back, once: a second
    release (or the ``with`` block's end after one) does nothing."""

    __slots__ = ("_bulkhead", "id", "lane", "taken_at")

    def __init__(self, bulkhead: _Holder, lease_id: str, lane: Lane, taken_at: float) -> None:
        self._bulkhead = bulkhead
        self.id = lease_id
        #: "shared": held in Redis; "local": a share taken while Redis was away.
        self.lane: Lane = lane
        self.taken_at = taken_at

    @property
    def held(self) -> bool:
        return self._bulkhead._holds(self)

    def release(self) -> None:
        if self._bulkhead._settle(self):
            self._bulkhead._drive(self._bulkhead._giving(self))

    async def arelease(self) -> None:
        """``release``, awaited; the give runs to its end even if this is cancelled."""
        if self._bulkhead._settle(self):
            await asyncio.shield(self._bulkhead._adrive(self._bulkhead._giving(self)))

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    async def __aenter__(self) -> Lease:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.arelease()

    def __repr__(self) -> str:
        return f"Lease({self.id!r}, lane={self.lane!r}, held={self.held})"
