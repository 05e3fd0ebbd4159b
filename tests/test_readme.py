"""The README's API snippets run as written (only pointed at the test db, not db 0)."""

from __future__ import annotations

import asyncio
import re
import textwrap
from pathlib import Path
from typing import Any

import redis

from app import load_config
from breaker.testing import set_testing
from tests.support.upstream import Reply, Upstream

README = (Path(__file__).parent.parent / "README.md").read_text()


def snippets() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README, re.DOTALL)


def on_test_db(source: str, url: str) -> str:
    return source.replace('"redis://127.0.0.1:6379/0"', repr(url)).replace(
        "redis.Redis()", f"redis.Redis.from_url({url!r})"
    )


def test_the_async_snippet_runs_as_written(redis_url: str, sync_redis: redis.Redis) -> None:
    source = on_test_db(snippets()[0], redis_url)

    async def some_coroutine_function(x: int) -> int:
        return x + 1

    namespace: dict[str, Any] = {"some_coroutine_function": some_coroutine_function, "arg": 41}
    body = textwrap.indent(source, "    ")
    exec(f"async def snippet():\n{body}\n    return result", namespace)
    assert asyncio.run(namespace["snippet"]()) == 42


def test_the_sync_snippet_runs_as_written(redis_url: str, sync_redis: redis.Redis) -> None:
    source = on_test_db(snippets()[1], redis_url)
    namespace: dict[str, Any] = {"some_function": lambda x: x * 2, "arg": 21}
    exec(source, namespace)
    assert namespace["result"] == 42
    assert callable(namespace["charge"])


def on_upstream(source: str, upstream: Upstream) -> str:
    return source.replace("http://inventory.internal", upstream.url)


def test_the_retry_decorator_snippet_runs_as_written(
    redis_url: str, sync_redis: redis.Redis, upstream: Upstream
) -> None:
    upstream.plan("/stock/42", Reply(503), Reply(200, body=b"7"))
    namespace: dict[str, Any] = {}
    exec(on_upstream(on_test_db(snippets()[2], redis_url), upstream), namespace)
    set_testing(True)
    try:
        response = namespace["stock"]("42")
    finally:
        set_testing(False)
    assert (response.status_code, response.text) == (200, "7")
    assert len(upstream.hits_on("/stock/42")) == 2


def test_the_transport_snippet_runs_as_written(
    redis_url: str, sync_redis: redis.Redis, upstream: Upstream
) -> None:
    upstream.plan("/stock/42", Reply(502), Reply(200))
    source = on_upstream(on_test_db(snippets()[3], redis_url), upstream)
    namespace: dict[str, Any] = {}
    body = textwrap.indent(source, "    ")
    exec(f"async def snippet():\n{body}\n    return response, attempts", namespace)
    set_testing(True)
    try:
        response, attempts = asyncio.run(namespace["snippet"]())
    finally:
        set_testing(False)
    assert (response.status_code, attempts) == (200, 2)


def test_the_gateway_toml_example_loads(tmp_path: Path) -> None:
    [toml] = re.findall(r"```toml\n(.*?)```", README, re.DOTALL)
    path = tmp_path / "fleetbreaker.toml"
    path.write_text(toml)
    config = load_config({"BREAKER_CONFIG": str(path)})
    payments = config.upstreams["payments"]
    assert str(payments.url) == "http://payments.internal:8080/api"
    assert payments.breaker is not None
    assert payments.breaker.on_backend_error == "fail_closed"
    assert payments.retry.deadline == 5.0
    assert config.retry_buffer_bytes == 65536
