"""The fallback lane: the breaker's own Lua, run in this process while Redis is away.

While Redis cannot be reached, a ``fail_open`` breaker keeps deciding by itself with
the same rules: the same library runs here, on a small in-memory store, in lupa's Lua
5.1 (Redis's). It is loaded once, as Redis loads a FUNCTION library, so a decision
costs tens of microseconds: cheap enough to take on the event loop.

Only the commands the scripts use are here, with Redis's semantics for the values
they pass and receive. Keys expire lazily, by the script clock (``ARGV[1]`` or
``time.time()``, as Redis ``TIME``). Nothing is published: this process's own
breakers hear their transitions from the replies.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Callable
from typing import Any

import lupa.lua51 as lua

from .._types import SCRIPT_NAMES, ScriptName
from .events import EventHub
from .scripts import function_name, library_source

Value = bytes | int | float | bool | None


class ScriptError(RuntimeError):
    """A script failed in the local engine: a bug, never a network problem."""


def _text(value: Any) -> bytes:
    """An argument as Redis receives it: a Lua number becomes its shortest text."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, float):
        return (str(int(value)) if value.is_integer() else repr(value)).encode()
    return str(value).encode()


def _bound(text: bytes) -> tuple[float, bool]:
    """A ZSET score bound: ``(12`` is exclusive, ``-inf``/``+inf`` unbounded."""
    exclusive = text.startswith(b"(")
    raw = text[1:] if exclusive else text
    return float(raw.replace(b"inf", b"Infinity")) if b"inf" in raw else float(raw), exclusive


class _Store:
    """The keys of the fallback lane: hashes and sorted sets, with lazy expiry."""

    def __init__(self, runtime: Any) -> None:
        self._runtime = runtime
        self._keys: dict[bytes, dict[bytes, Any]] = {}
        self._expires: dict[bytes, float] = {}
        self.now_ms: float = 0.0

    def clear(self) -> None:
        self._keys.clear()
        self._expires.clear()

    def _live(self, key: bytes) -> dict[bytes, Any] | None:
        expires = self._expires.get(key)
        if expires is not None and expires <= self.now_ms:
            self._keys.pop(key, None)
            self._expires.pop(key, None)
        return self._keys.get(key)

    def _table(self, values: list[Any]) -> Any:
        return self._runtime.table_from(values)

    def call(self, command: bytes, *args: Any) -> Any:
        handler: Callable[..., Any] | None = getattr(self, f"_{command.decode().lower()}", None)
        if handler is None:
            raise ScriptError(f"the fallback lane has no command {command!r}")
        return handler(*(_text(arg) for arg in args))

    # -- hashes --------------------------------------------------------------------

    def _hash(self, key: bytes) -> dict[bytes, bytes]:
        found = self._live(key)
        if found is None:
            found = self._keys[key] = {}
        return found

    def _hgetall(self, key: bytes) -> Any:
        found = self._live(key) or {}
        return self._table([item for pair in found.items() for item in pair])

    def _hget(self, key: bytes, field: bytes) -> Any:
        return (self._live(key) or {}).get(field, False)

    def _hmget(self, key: bytes, *fields: bytes) -> Any:
        found = self._live(key) or {}
        return self._table([found.get(field, False) for field in fields])

    def _hset(self, key: bytes, *pairs: bytes) -> int:
        found = self._hash(key)
        added = 0
        for field, value in zip(pairs[::2], pairs[1::2], strict=True):
            added += field not in found
            found[field] = value
        return added

    def _hincrby(self, key: bytes, field: bytes, by: bytes) -> int:
        found = self._hash(key)
        value = int(found.get(field, b"0")) + int(by)
        found[field] = str(value).encode()
        return value

    def _hdel(self, key: bytes, *fields: bytes) -> int:
        found = self._live(key) or {}
        removed = sum(found.pop(field, None) is not None for field in fields)
        if not found:
            self._keys.pop(key, None)
        return removed

    # -- sorted sets ---------------------------------------------------------------

    def _zset(self, key: bytes) -> dict[bytes, float]:
        return self._hash(key)  # type: ignore[return-value]  # member -> score

    def _zadd(self, key: bytes, score: bytes, member: bytes) -> int:
        found = self._zset(key)
        added = int(member not in found)
        found[member] = float(score)
        return added

    def _zrem(self, key: bytes, *members: bytes) -> int:
        return self._hdel(key, *members)

    def _zscore(self, key: bytes, member: bytes) -> Any:
        score = (self._live(key) or {}).get(member)
        return False if score is None else _text(score)

    def _zcard(self, key: bytes) -> int:
        return len(self._live(key) or {})

    def _in_range(self, key: bytes, low: bytes, high: bytes) -> list[bytes]:
        (minimum, min_open), (maximum, max_open) = _bound(low), _bound(high)
        return [
            member
            for member, score in (self._live(key) or {}).items()
            if (score > minimum if min_open else score >= minimum)
            and (score < maximum if max_open else score <= maximum)
        ]

    def _zcount(self, key: bytes, low: bytes, high: bytes) -> int:
        return len(self._in_range(key, low, high))

    def _zremrangebyscore(self, key: bytes, low: bytes, high: bytes) -> int:
        return self._zrem(key, *self._in_range(key, low, high)) if self._live(key) else 0

    def _zrange(self, key: bytes, start: bytes, stop: bytes, *options: bytes) -> Any:
        ranked = sorted((self._live(key) or {}).items(), key=lambda item: (item[1], item[0]))
        last = int(stop) if int(stop) >= 0 else len(ranked) + int(stop)
        picked = ranked[int(start) : last + 1]
        if b"WITHSCORES" not in (option.upper() for option in options):
            return self._table([member for member, _ in picked])
        return self._table([item for m, s in picked for item in (m, _text(s))])

    # -- keys, time, pub/sub ---------------------------------------------------------

    def _del(self, *keys: bytes) -> int:
        removed = 0
        for key in keys:
            removed += self._live(key) is not None
            self._keys.pop(key, None)
            self._expires.pop(key, None)
        return removed

    def _pexpire(self, key: bytes, milliseconds: bytes) -> int:
        if self._live(key) is None:
            return 0
        self._expires[key] = self.now_ms + int(milliseconds)
        return 1

    def _time(self) -> Any:
        seconds, fraction = divmod(time.time(), 1)
        return self._table([str(int(seconds)).encode(), str(int(fraction * 1e6)).encode()])

    def _publish(self, channel: bytes, message: bytes) -> int:
        return 0

    _spublish = _publish


class LocalEngine:
    """The library, loaded once into one Lua runtime, over an in-memory store.

    >>> engine = LocalEngine()
    >>> engine.run("snapshot", ["b:{x}", "b:{x}:window", "b:{x}:leases"], ["", "", ""])[1]
    b'closed'
    """

    def __init__(self, source: str | None = None) -> None:
        """``source``: the library to load, this version's unless given (the model
        test loads a copy instrumented to count the branches it reaches)."""
        self._runtime = lua.LuaRuntime(encoding=None, unpack_returned_tuples=True)
        self._store = _Store(self._runtime)
        self._lock = threading.Lock()
        install = self._runtime.eval(
            "function(call, encode, decode) FUNCTIONS = {}; redis = {call = call, "
            "error_reply = function(message) return {err = message} end, "
            "register_function = function(a, b) if type(a) == 'table' then "
            "FUNCTIONS[a.function_name] = a.callback else FUNCTIONS[a] = b end end}; "
            "cjson = {encode = encode, decode = decode} end"
        )
        install(self._store.call, self._encode, self._decode)
        library = library_source() if source is None else source
        self._runtime.execute(library.split("\n", 1)[1].encode())
        functions = self._runtime.globals().FUNCTIONS
        self._functions = {name: functions[function_name(name).encode()] for name in SCRIPT_NAMES}

    def _encode(self, table: Any) -> bytes:
        def plain(value: Any) -> Any:
            if isinstance(value, bytes):
                return value.decode("utf-8", "replace")
            if isinstance(value, float) and value.is_integer():
                return int(value)
            if lua.lua_type(value) == "table":  # a snapshot's settings: an object in one
                return {plain(key): plain(item) for key, item in value.items()}
            return value

        return json.dumps(plain(table)).encode()

    def _decode(self, text: bytes) -> Any:
        decoded = json.loads(text)
        return self._runtime.table_from(
            {
                key.encode(): value.encode() if isinstance(value, str) else value
                for key, value in decoded.items()
            }
        )

    def run(self, name: ScriptName, keys: list[str], args: list[Any]) -> list[Any]:
        """Run operation ``name`` as FCALL would, and return its reply as redis-py does."""
        encoded = [_text(arg) for arg in args]
        with self._lock:
            self._store.now_ms = float(encoded[0]) if encoded[0] else time.time() * 1000
            try:
                reply = self._functions[name](
                    self._runtime.table_from([key.encode() for key in keys]),
                    self._runtime.table_from(encoded),
                )
            except lua.LuaError as exc:
                raise ScriptError(f"operation {name!r} failed: {exc}") from exc
        converted: list[Any] = _from_lua(reply)
        return converted

    def command(self, *command: Any) -> Any:
        """One command on the lane's keys, as a script's ``redis.call`` runs it, with
        its reply as redis-py gives it (tests read and edit the keys with it)."""
        with self._lock:
            return _from_lua(self._store.call(_text(command[0]), *command[1:]))

    def lua_global(self, name: str) -> Any:
        """A global of the library's runtime (an instrumented copy's counters)."""
        return self._runtime.globals()[name.encode()]

    def clear(self) -> None:
        """Forget every key (tests start each case empty)."""
        with self._lock:
            self._store.clear()


def _from_lua(value: Any) -> Any:
    """A script's reply as Redis converts it: tables to lists, numbers to integers."""
    if lua.lua_type(value) == "table":
        error = value[b"err"]
        if error is not None:
            raise ScriptError(_text(error).decode())
        return [_from_lua(value[index]) for index in range(1, len(value) + 1)]
    if isinstance(value, float):
        return math.trunc(value)
    if value is True:
        return 1
    if value is False:
        return None
    return value


_FALLBACK: LocalEngine | None = None
_FALLBACK_HUBS: dict[str, EventHub] = {}
_FALLBACK_LOCK = threading.Lock()


def fallback_engine() -> LocalEngine:
    """The process's one fallback engine, shared by every Redis-backed breaker."""
    global _FALLBACK
    with _FALLBACK_LOCK:
        if _FALLBACK is None:
            _FALLBACK = LocalEngine()
        return _FALLBACK


def fallback_hub(channel: str) -> EventHub:
    """Carries the fallback lane's transitions between this process's breakers (no
    other process hears them: nothing is published)."""
    with _FALLBACK_LOCK:
        if channel not in _FALLBACK_HUBS:
            _FALLBACK_HUBS[channel] = EventHub(None, channel)
        return _FALLBACK_HUBS[channel]
