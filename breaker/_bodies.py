"""Response bodies that settle their attempt's permit when they end: what the
transports (``_transport``) put on a response that counted as a success by its
headers, so a body that breaks off or outlasts ``body_timeout`` still counts as the
failure it is, and a half-open trial holds its lease until then.
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import httpx

from ._bulkhead.bulkhead import Bulkhead
from ._bulkhead.lease import Lease
from ._decisions.permit import AsyncPermit, Permit
from ._retry.rules import Attempt


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


async def _all(work: list[Awaitable[Any]]) -> None:
    """``work``, together. Awaited in the task that settles, so that each part runs in
    that task's context (``asyncio.gather`` wraps coroutines in tasks of the context
    it is called in)."""
    if len(work) == 1:
        await work[0]
    else:
        await asyncio.gather(*work)


class SettledStream(httpx.AsyncByteStream):
    """A response body that settles its attempt's permit once, when it ends.

    The rule, the same as the sync twin's: a body that ends is the success its headers
    said; one that breaks off counts as its error does; one past ``body_timeout`` is a
    failure (``httpx.ReadTimeout``); a reader that stops early (closes, or is
    cancelled) leaves the headers' success standing.

    It settles in the context of the attempt that got the headers (made while the
    attempt ran), not the reader's: the breaker's listeners then see that attempt
    (``current_attempt()``) and its trace, as they do for a call settled at once.

    Over a ``LeasedStream`` it also gives the attempt's lease back, sent beside the
    record rather than before it: the body's end waits one round trip to Redis for
    both, not two.
    """

    def __init__(
        self, inner: httpx.AsyncByteStream, permit: AsyncPermit, deadline: Deadline
    ) -> None:
        self._inner = inner
        self._permit = permit
        self._deadline = deadline
        self._context = contextvars.copy_context()
        self._lease: Lease | None = None
        if isinstance(inner, LeasedStream):
            self._lease = inner.hand_over()

    async def _settle(self, error: BaseException | None) -> None:
        """Settle the permit and give the lease back, once each. Shielded: a reader
        that is being cancelled (anyio cancels every await of a cancelled scope) still
        gets its call recorded and its lease given back."""
        work: list[Awaitable[Any]] = []
        if not self._permit.settled:
            work.append(self._permit.success() if error is None else self._permit.settle(error))
        if self._lease is not None:
            work.append(self._lease.arelease())  # a second release does nothing
        if not work:
            return
        recording = asyncio.get_running_loop().create_task(_all(work), context=self._context)
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


class LeasedStream(httpx.AsyncByteStream):
    """A response body that gives its attempt's bulkhead lease back once it ends,
    breaks off or is closed (once: ``Lease.arelease`` does nothing the second time;
    shielded, so a cancelled reader still gives it back). A ``SettledStream`` over it
    takes the end over (``hand_over``), to give the lease beside its record."""

    def __init__(self, inner: httpx.AsyncByteStream, lease: Lease) -> None:
        self._inner = inner
        self._lease = lease
        self._handed_over = False

    def hand_over(self) -> Lease:
        """The lease, for the stream over this one to give back when the body ends or
        breaks off; ``aclose`` still gives it back, if that stream has not."""
        self._handed_over = True
        return self._lease

    async def __aiter__(self) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._inner:
                yield chunk
        except BaseException:
            if not self._handed_over:
                await self._lease.arelease()
            raise
        if not self._handed_over:
            await self._lease.arelease()

    async def aclose(self) -> None:
        try:
            await self._inner.aclose()
        finally:
            await self._lease.arelease()


def leased(
    bulkhead: Bulkhead, send: Callable[[Attempt], Awaitable[httpx.Response]]
) -> Callable[[Attempt], Awaitable[httpx.Response]]:
    """``send``, each attempt holding a lease of ``bulkhead`` until its response's body
    ends (``LeasedStream``); an attempt that gets no lease is not sent
    (``BulkheadFullError``), one that fails gives its lease back at once."""

    async def attempt(attempt: Attempt) -> httpx.Response:
        lease = await bulkhead.aacquire()
        try:
            response = await send(attempt)
        except BaseException:
            await lease.arelease()
            raise
        assert isinstance(response.stream, httpx.AsyncByteStream)
        response.stream = LeasedStream(response.stream, lease)
        return response

    return attempt
