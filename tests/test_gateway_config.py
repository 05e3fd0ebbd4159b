"""The gateway's configuration: what it accepts, and one line naming the key otherwise."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import httpx
import pytest

from app import ConfigError
from app.config.upstreams import DEFAULT_BATCH_INTERVAL
from app.localfleet.services import fleetbreaker_command
from tests.support.gateway import gateway_config


def test_no_configuration_is_the_demo_on_the_embedded_backend(tmp_path: Path) -> None:
    config = gateway_config(tmp_path, token=None)
    assert config.demo
    assert config.backend == "embedded"
    assert list(config.upstreams) == ["demo"]
    assert str(config.upstreams["demo"].url) == "http://127.0.0.1:8000/demo"
    assert config.admin_token is None


def test_upstreams_from_the_environment(tmp_path: Path) -> None:
    config = gateway_config(
        tmp_path, upstreams="api=http://127.0.0.1:9000/v1, search=https://search.internal"
    )
    assert not config.demo
    assert {name: str(up.url) for name, up in config.upstreams.items()} == {
        "api": "http://127.0.0.1:9000/v1",
        "search": "https://search.internal",
    }


def test_file_settings_merge_defaults_under_each_upstream(tmp_path: Path) -> None:
    config = gateway_config(
        tmp_path,
        """
        [gateway]
        prefix = "gw"
        max_body_bytes = 2048
        retry_buffer_bytes = 1024

        [client]
        connect_timeout = 0.5
        max_connections = 7

        [defaults.breaker]
        failure_threshold = 4
        reset_timeout = 20
        [defaults.retry]
        attempts = 2
        budget = false

        [upstreams.api]
        url = "http://127.0.0.1:9000"
        breaker = { failure_threshold = 2 }
        retry = { attempts = 4, per_try_timeout = 1.5, retry_statuses = [503] }

        [upstreams.search]
        url = "http://127.0.0.1:9001"
        """,
        redis_url="redis://127.0.0.1:6379/13",
    )
    api, search = config.upstreams["api"], config.upstreams["search"]
    assert api.breaker is not None
    assert search.breaker is not None
    assert (api.breaker.failure_threshold, api.breaker.reset_timeout) == (2, 20.0)
    assert (search.breaker.failure_threshold, search.breaker.reset_timeout) == (4, 20.0)
    assert api.breaker.prefix == search.breaker.prefix == "gw"
    assert (api.retry.attempts, api.retry.per_try_timeout) == (4, 1.5)
    assert api.retry.retry_statuses == frozenset({503})
    assert api.retry.budget is None
    assert search.retry.attempts == 2
    assert (config.max_body_bytes, config.retry_buffer_bytes) == (2048, 1024)
    assert config.client.limits().max_connections == 7
    assert config.client.timeout().connect == 0.5
    assert config.backend == "redis"


def test_only_network_errors_and_5xx_count_against_an_upstream(tmp_path: Path) -> None:
    config = (
        gateway_config(tmp_path, upstreams="api=http://127.0.0.1:9000").upstreams["api"].breaker
    )
    assert config is not None
    assert config.record_exceptions == (httpx.TransportError,)
    assert config.failure_predicate is not None
    request = httpx.Request("GET", "http://x")
    assert config.failure_predicate(httpx.Response(502, request=request))
    assert not config.failure_predicate(httpx.Response(429, request=request))


def test_a_retry_budget_table_is_read(tmp_path: Path) -> None:
    config = gateway_config(
        tmp_path,
        """
        [upstreams.api]
        url = "http://127.0.0.1:9000"
        retry = { budget = { ratio = 0.5, min_retries_per_second = 2 } }
        """,
    )
    budget = config.upstreams["api"].retry.budget
    assert budget is not None
    assert (budget.ratio, budget.min_retries_per_second) == (0.5, 2)


def test_batch_interval_false_records_every_success(tmp_path: Path) -> None:
    config = gateway_config(
        tmp_path,
        """
        [upstreams.exact]
        url = "http://127.0.0.1:9000"
        breaker.batch_interval = false

        [upstreams.batched]
        url = "http://127.0.0.1:9000"
        breaker.batch_interval = 0.05

        [upstreams.default]
        url = "http://127.0.0.1:9000"
        """,
    )
    intervals = {
        name: up.breaker.batch_interval for name, up in config.upstreams.items() if up.breaker
    }
    assert intervals == {"exact": None, "batched": 0.05, "default": DEFAULT_BATCH_INTERVAL}


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        pytest.param("[gatway]\nprefix='x'", "gatway: unknown key", id="unknown-table"),
        pytest.param(
            "[gateway]\nmax_body = 1", "gateway.max_body: unknown key", id="unknown-gateway-key"
        ),
        pytest.param(
            "[upstreams.api]\nurl='http://h'\nbreaker={failure_treshold=3}",
            "upstreams.api.breaker.failure_treshold: unknown key",
            id="unknown-breaker-key",
        ),
        pytest.param(
            "[upstreams.api]\nurl='http://h'\nretry={attemps=3}",
            "upstreams.api.retry.attemps: unknown key",
            id="unknown-retry-key",
        ),
        pytest.param(
            "[upstreams.api]\nurl='http://h'\nbreaker={failure_threshold=0}",
            "upstreams.api.breaker.failure_threshold: must be an integer >= 1, got 0",
            id="bad-breaker-value",
        ),
        pytest.param(
            "[defaults.breaker]\nreset_timeout=-1\n[upstreams.api]\nurl='http://h'",
            "defaults.breaker.reset_timeout: must be a positive number of seconds, got -1",
            id="bad-default-value",
        ),
        pytest.param(
            "[upstreams.api]\nurl='http://h'\nbreaker={on_backend_error='maybe'}",
            "upstreams.api.breaker.on_backend_error: must be 'fail_open' or 'fail_closed'",
            id="bad-policy",
        ),
        pytest.param(
            "[upstreams.api]\nurl='http://h'\nretry={attempts='3'}",
            "upstreams.api.retry.attempts: must be an integer >= 1, got '3'",
            id="retry-wrong-type",
        ),
        pytest.param(
            "[upstreams.api]\nurl='http://h'\nretry={budget={ratio=-1}}",
            "upstreams.api.retry.budget.ratio: must be a number >= 0, got -1",
            id="bad-budget",
        ),
        pytest.param(
            "[upstreams.api]\nurl='http://h'\nbreaker={batch_interval=true}",
            "upstreams.api.breaker.batch_interval: must be a positive number of seconds",
            id="batch-true",
        ),
        pytest.param(
            "[upstreams.api]\nurl='http://h'\nretry={budget=true}",
            "upstreams.api.retry.budget: must be a table or false",
            id="budget-true",
        ),
        pytest.param(
            "[upstreams.api]\nurl='ftp://h'",
            "upstreams.api.url: 'ftp://h' must be an http:// or https:// URL with a host",
            id="bad-scheme",
        ),
        pytest.param(
            "[upstreams.api]\nurl='http://h/?q=1'",
            "upstreams.api.url: 'http://h/?q=1' must not carry a query",
            id="url-with-query",
        ),
        pytest.param("[upstreams.api]\n", "upstreams.api.url: Field required", id="no-url"),
        pytest.param(
            "[upstreams.'a b']\nurl='http://h'",
            "upstreams.a b: upstream name 'a b' must be 1-64 letters",
            id="bad-name",
        ),
        pytest.param(
            "[gateway]\nprefix='a{b'\n[upstreams.api]\nurl='http://h'",
            "gateway.prefix:",
            id="bad-prefix",
        ),
        pytest.param("[upstreams.api\nurl=1", "invalid TOML", id="toml-syntax"),
        pytest.param(
            "[client]\nconnect_timeout=0",
            "client.connect_timeout: Input should be greater than 0",
            id="bad-client",
        ),
        pytest.param(
            "[gateway]\nhead_timeout=0",
            "gateway.head_timeout: Input should be greater than 0",
            id="head-timeout",
        ),
        pytest.param(
            "[gateway]\nmax_connections=0",
            "gateway.max_connections: Input should be greater than 0",
            id="max-connections",
        ),
        pytest.param(
            "[gateway]\nmax_header_bytes=8192\nmax_head_bytes=4096",
            "gateway.max_head_bytes: must be at least max_header_bytes (8192)",
            id="head-under-header",
        ),
    ],
)
def test_bad_file_is_one_line_naming_the_key(tmp_path: Path, toml: str, message: str) -> None:
    with pytest.raises(ConfigError) as refused:
        gateway_config(tmp_path, toml)
    text = str(refused.value)
    assert message in text
    assert "\n" not in text


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        pytest.param({"upstreams": "api"}, "BREAKER_UPSTREAMS: 'api' is not name=url", id="no-url"),
        pytest.param(
            {"upstreams": "api=http://a,api=http://b"},
            "BREAKER_UPSTREAMS: 'api' is given twice",
            id="twice",
        ),
        pytest.param(
            {"upstreams": "../x=http://a"}, "BREAKER_UPSTREAMS: upstream name", id="bad-name"
        ),
        pytest.param(
            {"redis_url": "mysql://127.0.0.1"},
            "BREAKER_REDIS_URL: unknown scheme 'mysql'",
            id="redis",
        ),
        pytest.param(
            {"demo_failure_rate": "2"}, "BREAKER_DEMO_FAILURE_RATE: Input should be", id="rate"
        ),
        pytest.param(
            {"instance_name": "a/b"},
            "BREAKER_INSTANCE_NAME: String should match pattern",
            id="instance-name",
        ),
        pytest.param(
            {"config": "/nonexistent/fleetbreaker.toml"},
            "BREAKER_CONFIG (/nonexistent/fleetbreaker.toml): cannot read it",
            id="missing-file",
        ),
    ],
)
def test_bad_environment_is_one_line_naming_the_variable(
    tmp_path: Path, environ: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError) as refused:
        gateway_config(tmp_path, **environ)
    assert message in str(refused.value)
    assert "\n" not in str(refused.value)


def test_an_upstream_in_the_file_and_the_environment_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="BREAKER_UPSTREAMS: 'api' is also in"):
        gateway_config(tmp_path, "[upstreams.api]\nurl='http://h'", upstreams="api=http://h")


@pytest.mark.slow  # a process
def test_serve_refuses_a_bad_config_with_one_line_and_exit_code_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[upstreams.api]\nurl='http://h'\nbreaker={failure_threshold=0}\n")
    result = subprocess.run(
        [*fleetbreaker_command(), "serve", "--port", "1", "--admin-port", "2"],
        env={"BREAKER_CONFIG": str(bad), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr == (
        "fleetbreaker: invalid configuration: "
        "upstreams.api.breaker.failure_threshold: must be an integer >= 1, got 0\n"
    )


def test_breaker_false_proxies_an_upstream_once_and_unguarded(tmp_path: Path) -> None:
    config = gateway_config(
        tmp_path,
        """
        [defaults.retry]
        attempts = 4
        [upstreams.static]
        url = "http://127.0.0.1:9000"
        breaker = false
        """,
    )
    static = config.upstreams["static"]
    assert static.breaker is None
    assert static.retry.attempts == 1  # the defaults' retries need a breaker


@pytest.mark.parametrize(
    ("table", "message"),
    [
        (
            "breaker = false\nretry = { attempts = 3 }",
            "upstreams.static.retry: retries need the breaker, and breaker = false",
        ),
        ("breaker = true", "upstreams.static.breaker"),
    ],
    ids=["retries-without-breaker", "breaker-true"],
)
def test_breaker_false_refuses_what_it_cannot_honour(
    tmp_path: Path, table: str, message: str
) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        gateway_config(tmp_path, f'[upstreams.static]\nurl = "http://127.0.0.1:9000"\n{table}\n')


# The last: 19 characters as set, 15 once the spaces around it are stripped.
@pytest.mark.parametrize("token", ["x", "fifteen-chars-x", "  fifteen-chars-x  "])
def test_an_admin_token_under_16_characters_is_refused(tmp_path: Path, token: str) -> None:
    with pytest.raises(ConfigError) as refused:
        gateway_config(tmp_path, token=token)
    assert str(refused.value).startswith(
        f"BREAKER_ADMIN_TOKEN: must be at least 16 characters, got {len(token.strip())}"
    )
    assert token.strip() not in str(refused.value)


def test_an_admin_token_of_16_characters_is_accepted(tmp_path: Path) -> None:
    assert gateway_config(tmp_path, token="0123456789abcdef").admin_token == "0123456789abcdef"


def test_the_admin_listener_is_on_the_loopback_at_8001_unless_configured(tmp_path: Path) -> None:
    default = gateway_config(tmp_path)
    assert (default.admin_host, default.admin_port) == ("127.0.0.1", 8001)
    toml = '[gateway]\nadmin_host = "::1"\nadmin_port = 9101\n'
    in_file = gateway_config(tmp_path, toml)
    assert (in_file.admin_host, in_file.admin_port) == ("::1", 9101)
    over = gateway_config(tmp_path, toml, admin_host="0.0.0.0", admin_port="9102")
    assert (over.admin_host, over.admin_port) == ("0.0.0.0", 9102)  # the environment's


@pytest.mark.parametrize(
    ("toml", "environ", "message"),
    [
        ("[gateway]\nadmin_port = 0", {}, "gateway.admin_port: Input should be greater than"),
        ("[gateway]\nadmin_port = 70000", {}, "gateway.admin_port: Input should be less than"),
        ("[gateway]\nadmin_host = ''", {}, "gateway.admin_host: String should have at least"),
        ("", {"admin_port": "http"}, "BREAKER_ADMIN_PORT: Input should be a valid integer"),
    ],
)
def test_a_bad_admin_listener_is_one_line_naming_the_key(
    tmp_path: Path, toml: str, environ: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError) as refused:
        gateway_config(tmp_path, toml, **environ)
    assert message in str(refused.value)
    assert "\n" not in str(refused.value)
