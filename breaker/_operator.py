"""Operator tools: find, read and control breakers in Redis by name alone.

A tool such as the CLI knows a breaker's name, not the settings its processes run
with. It sends none: the scripts take the settings the breaker stored with its state
(``key_ttl``, ``window_bucket``, ``buckets``), so a reset never re-applies defaults to
the breaker's keys and a snapshot sums its window as its own buckets cut it.
"""

from __future__ import annotations

import time
from typing import Any

from ._config import BreakerConfig
from ._keys import BreakerKeys, name_of_state_key, state_key_pattern
from ._models import BreakerSnapshot
from ._store.backend import open_backend, release
from ._store.wire import OPERATOR, control_args, decode_reply, decode_snapshot, snapshot_args
from ._types import ControlAction


class BreakerOperator:
    """Reads and controls the breakers under ``prefix`` on a sync ``redis.Redis``.

    >>> import redis
    >>> operator = BreakerOperator(redis.Redis(), prefix="breaker")   # doctest: +SKIP
    >>> operator.reset("payments")                                   # doctest: +SKIP
    """

    def __init__(self, redis: Any, *, prefix: str = "breaker", timeout: float = 5.0) -> None:
        self._client = redis
        self._config = BreakerConfig(prefix=prefix, backend_timeout=timeout)
        self._backend = open_backend(redis, timeout)

    def names(self) -> list[str]:
        """Every breaker that has a state hash under the prefix, sorted."""
        found = {
            name
            for key in self._client.scan_iter(match=state_key_pattern(self._config.prefix))
            if (name := name_of_state_key(self._config.prefix, key)) is not None
        }
        return sorted(found)

    def snapshot(self, name: str) -> BreakerSnapshot:
        args = snapshot_args(None)
        return decode_snapshot(name, self._run(name, "snapshot", args), self._backend.kind)

    def control(self, name: str, action: ControlAction) -> None:
        """``reset``, ``force_open`` or ``disable`` breaker ``name``, fleet-wide."""
        args = control_args(OPERATOR, action, None)
        decode_reply(self._run(name, "control", args))

    def _run(self, name: str, script: Any, args: list[Any]) -> list[Any]:
        keys = BreakerKeys.of(self._config.prefix, name).as_list()
        return self._backend.run(name, script, keys, args, time.monotonic())

    def close(self) -> None:
        if release(self._backend):
            self._backend.close()

    def __enter__(self) -> BreakerOperator:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
