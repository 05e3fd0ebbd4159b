"""Invalid settings are refused at construction, naming the field."""

from __future__ import annotations

from dataclasses import fields
from datetime import timedelta
from typing import Any, get_type_hints

import pytest

from breaker import BreakerConfig, BreakerSettings, CircuitBreaker, ConfigurationError


@pytest.mark.parametrize(
    ("settings", "field"),
    [
        pytest.param({"failure_threshold": -1}, "failure_threshold", id="negative-threshold"),
        pytest.param({"failure_threshold": 0}, "failure_threshold", id="zero-threshold"),
        pytest.param({"failure_threshold": 2.5}, "failure_threshold", id="float-threshold"),
        pytest.param({"failure_threshold": True}, "failure_threshold", id="bool-threshold"),
        pytest.param({"reset_timeout": 0}, "reset_timeout", id="zero-reset-timeout"),
        pytest.param({"reset_timeout": float("inf")}, "reset_timeout", id="infinite-reset"),
        pytest.param({"half_open_max_calls": 0}, "half_open_max_calls", id="no-trial-calls"),
        pytest.param({"failure_rate_threshold": 1.5}, "failure_rate_threshold", id="rate-above-1"),
        pytest.param({"failure_rate_threshold": -0.1}, "failure_rate_threshold", id="rate-below-0"),
        pytest.param({"failure_rate_threshold": 0}, "failure_rate_threshold", id="rate-zero"),
        pytest.param(
            {"slow_call_rate_threshold": 0.5}, "slow_call_rate_threshold", id="slow-rate-alone"
        ),
        pytest.param({"window": 0.5, "window_bucket": 1.0}, "window", id="window-below-bucket"),
        pytest.param({"window": 1000.0, "window_bucket": 1.0}, "window", id="too-many-buckets"),
        pytest.param({"reset_timeout_max": 1.0}, "reset_timeout_max", id="max-below-reset"),
        pytest.param(
            {"reset_timeout_multiplier": 0.5}, "reset_timeout_multiplier", id="shrinking-open"
        ),
        pytest.param({"reset_timeout_jitter": 2.0}, "reset_timeout_jitter", id="jitter-above-1"),
        pytest.param({"on_backend_error": "retry"}, "on_backend_error", id="unknown-policy"),
        pytest.param({"prefix": "a{b}"}, "prefix", id="prefix-with-braces"),
        pytest.param({"prefix": ""}, "prefix", id="empty-prefix"),
        pytest.param({"key_ttl": 5.0}, "key_ttl", id="ttl-shorter-than-window"),
        pytest.param({"record_exceptions": [ValueError]}, "record_exceptions", id="list-not-tuple"),
        pytest.param({"failure_predicate": 3}, "failure_predicate", id="predicate-not-callable"),
        pytest.param({"batch_interval": -1}, "batch_interval", id="negative-batch"),
        pytest.param({"treshold": 3}, "treshold", id="misspelt-setting"),
    ],
)
def test_invalid_setting_raises_configuration_error_naming_the_field(
    settings: dict[str, Any], field: str
) -> None:
    with pytest.raises(ConfigurationError) as refused:
        CircuitBreaker("payments", **settings)
    assert refused.value.field == field
    assert str(refused.value).startswith(f"{field}: ")


def test_configuration_error_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="failure_threshold"):
        BreakerConfig(failure_threshold=-1)


def test_durations_accept_timedelta_as_seconds() -> None:
    cb = CircuitBreaker(
        "payments", reset_timeout=timedelta(minutes=2), window=timedelta(seconds=30)
    )
    assert cb.config.reset_timeout == 120.0
    assert cb.config.window == 30.0


def test_config_and_keyword_settings_are_exclusive() -> None:
    with pytest.raises(ConfigurationError) as refused:
        CircuitBreaker("payments", config=BreakerConfig(), failure_threshold=3)
    assert refused.value.field == "config"


def test_keyword_settings_are_exactly_the_config_fields() -> None:
    assert set(get_type_hints(BreakerSettings)) == {field.name for field in fields(BreakerConfig)}


def test_buckets_cover_the_window() -> None:
    assert BreakerConfig(window=10.0, window_bucket=3.0).buckets == 4
    assert BreakerConfig(window=10.0, window_bucket=1.0).buckets == 10
