"""One decorator for every guard: the breaker's and the retrier's ``@`` forms."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any, TypeVar, cast

F = TypeVar("F", bound=Callable[..., Any])


def decorate(fn: F, call: Callable[..., Any]) -> F:
    """Wrap ``fn`` so that each invocation runs as ``call(fn, *args, **kwargs)``.

    ``call`` returns a coroutine for an async ``fn``, so the async wrapper awaits it
    and stays a coroutine function (``inspect.iscoroutinefunction`` still holds).
    """
    if inspect.iscoroutinefunction(fn):

        @functools.wraps(fn)
        async def guarded_async(*args: Any, **kwargs: Any) -> Any:
            return await call(fn, *args, **kwargs)

        return cast(F, guarded_async)

    @functools.wraps(fn)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        return call(fn, *args, **kwargs)

    return cast(F, guarded)
