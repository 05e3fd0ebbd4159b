"""Response bodies that settle their attempt's permit when they end: what the
transports (``_transport``) put on a response that counted as a success by its
headers, so a body that breaks off or outlasts ``body_timeout`` still counts as the
failure it is, and a half-open trial holds its lease until then.
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx

from ._decisions.permit import AsyncPermit, Permit


class Deadline:
    """When a response body must have ended (``body_timeout`` after its headers), and
    the error that says it did not. Both body streams check it as each chunk comes;
    the async one also cuts a read that stalls past it."""

    def __init__(self, request: httpx.Request, limit: float | None, now: float) -> None:
        self.request = request
        self.limit = limit
        self.at = None if limit is None else now + limit

    def passed(self, now: float) -> bool:
        return self.at is not None and now > self.at

    def error(self) -> httpx.ReadTimeout:
        return httpx.ReadTimeout(
            f"the response body took longer than {self.limit:g} s", request=self.request
        )


_RECORDING: set[asyncio.Future[Any]] = set()


class SettledStream(httpx.AsyncByteStream):
    """A response body that settles its attempt's permit once, when it ends.

    The rule, the same as the sync twin's: a body that ends is the success its headers
    said; one that breaks off counts as its error does; one past ``body_timeout`` is a
    failure (``httpx.ReadTimeout``); a reader that stops early (closes, or is
    cancelled) leaves the headers' success standing.

    It settles in the context of the attempt that got the headers (made while the
    attempt ran), not the reader's: the breaker's listeners then see that attempt
    (``current_attempt()``) and its trace, as they do for a call settled at once.
    """

    def __init__(
        self, inner: httpx.AsyncByteStream, permit: AsyncPermit, deadline: Deadline
    ) -> None:
        self._inner = inner
        self._permit = permit
        self._deadline = deadline
        self._context = contextvars.copy_context()

    async def _settle(self, error: BaseException | None) -> None:
        """Settle the permit, once. Shielded: a reader that is being cancelled (anyio
        cancels every await of a cancelled scope) still gets its call recorded."""
        if self._permit.settled:
            return
        settle = self._permit.success() if error is None else self._permit.settle(error)
        recording = asyncio.get_running_loop().create_task(settle, context=self._context)
        _RECORDING.add(recording)  # a task nobody awaits must be held, or it may vanish
        recording.add_done_callback(_RECORDING.discard)
        await asyncio.shield(recording)

    async def __aiter__(self) -> AsyncIterator[bytes]:
        chunks = aiter(self._inner)
        try:
            while True:
                try:
                    async with asyncio.timeout_at(self._deadline.at):
                        chunk = await anext(chunks)
                except StopAsyncIteration:
                    break
                yield chunk
        except TimeoutError as exc:
            error = self._deadline.error()
            await self._settle(error)
            raise error from exc
        except asyncio.CancelledError:
            await self._settle(None)  # the reader went away: the headers' success stands
            raise
        except Exception as exc:
            await self._settle(exc)
            raise
        await self._settle(None)

    async def aclose(self) -> None:
        await self._settle(None)
        await self._inner.aclose()


class SyncSettledStream(httpx.SyncByteStream):
    """The sync twin of ``SettledStream``, by the same rule (and in the same
    context). It cannot interrupt a read: a stalled body is cut by httpx's read
    timeout, a trickling one here."""

    def __init__(self, inner: httpx.SyncByteStream, permit: Permit, deadline: Deadline) -> None:
        self._inner = inner
        self._permit = permit
        self._deadline = deadline
        self._context = contextvars.copy_context()

    def _settle(self, error: BaseException | None) -> None:
        if self._permit.settled:
            return
        if error is None:
            self._context.copy().run(self._permit.success)
        else:
            self._context.copy().run(self._permit.settle, error)

    def __iter__(self) -> Iterator[bytes]:
        try:
            for chunk in self._inner:
                if self._deadline.passed(time.monotonic()):
                    raise self._deadline.error()
                yield chunk
        except Exception as exc:
            self._settle(exc)
            raise
        self._settle(None)

    def close(self) -> None:
        self._settle(None)
        self._inner.close()
