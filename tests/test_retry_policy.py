"""The retry policy's decisions, as pure functions: no network, no clock, no sleep."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import httpx
import pytest

from breaker import (
    RETRY_EXCEPTIONS,
    CircuitOpenError,
    ConfigurationError,
    RetryBudget,
    RetryDetails,
    RetryPolicy,
    parse_retry_after,
)
from breaker._transport import http_rules

NOW = 1_700_000_000.0


def response(status: int, method: str = "GET", **headers: str) -> httpx.Response:
    request = httpx.Request(method, "http://upstream.test/x")
    return httpx.Response(status, headers=headers, request=request)


def http_date(epoch: float) -> str:
    return format_datetime(datetime.fromtimestamp(epoch, UTC), usegmt=True)


def test_backoff_ceiling_doubles_from_a_tenth_of_a_second_up_to_max_backoff() -> None:
    policy = RetryPolicy(attempts=10)
    ceilings = [policy.backoff_ceiling(n) for n in range(1, 9)]
    assert ceilings == [0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0]


def test_a_huge_attempt_number_stays_at_max_backoff() -> None:
    assert RetryPolicy().backoff_ceiling(5000) == 5.0


@pytest.mark.parametrize("attempt", [1, 2, 3, 6, 7])
def test_full_jitter_draws_anywhere_between_zero_and_the_ceiling(attempt: int) -> None:
    policy = RetryPolicy(attempts=10)
    ceiling = policy.backoff_ceiling(attempt)
    assert policy.draw_backoff(attempt, sample=0.0) == 0.0
    assert policy.draw_backoff(attempt, sample=0.5) == pytest.approx(ceiling / 2)
    draws = [policy.draw_backoff(attempt) for _ in range(500)]
    assert all(0.0 <= draw <= ceiling for draw in draws)
    # Full jitter, not "equal jitter": the lower half of the range is used too.
    assert min(draws) < ceiling / 4 < ceiling * 3 / 4 < max(draws)


@pytest.mark.parametrize("status", [429, 502, 503, 504])
def test_transient_statuses_are_retried(status: int) -> None:
    assert RetryPolicy().wants_retry(response(status))


@pytest.mark.parametrize("status", [200, 201, 301, 400, 401, 403, 404, 409, 422, 500, 501])
def test_other_statuses_are_not_retried(status: int) -> None:
    assert not RetryPolicy().wants_retry(response(status))


def test_retried_statuses_can_be_configured() -> None:
    policy = RetryPolicy(retry_statuses={500, 503})
    assert policy.wants_retry(response(500))
    assert not policy.wants_retry(response(429))


@pytest.mark.parametrize(
    "error",
    [
        ConnectionError("reset"),
        TimeoutError(),
        httpx.ConnectError("refused"),
        httpx.ReadTimeout("slow"),
        httpx.ConnectTimeout("slow"),
        httpx.ReadError("reset"),
        httpx.RemoteProtocolError("Server disconnected without sending a response."),
    ],
    ids=type,
)
def test_connection_errors_and_timeouts_are_retried(error: Exception) -> None:
    """Plain ones by any policy; httpx's own where a transport runs the policy (they
    stand for the ConnectionError and TimeoutError it retries)."""
    assert http_rules(RetryPolicy()).wants_retry(error)
    assert RetryPolicy().wants_retry(error) == isinstance(error, RETRY_EXCEPTIONS)


def test_httpx_errors_are_retried_only_as_the_errors_they_stand_for() -> None:
    timeouts_only = http_rules(RetryPolicy(retry_exceptions=(TimeoutError,)))
    assert timeouts_only.wants_retry(httpx.ReadTimeout("slow"))
    assert not timeouts_only.wants_retry(httpx.ConnectError("refused"))


@pytest.mark.parametrize(
    "error",
    [ValueError("bad"), KeyError("k"), RuntimeError("x"), httpx.UnsupportedProtocol("ftp")],
    ids=type,
)
def test_other_exceptions_are_not_retried(error: Exception) -> None:
    assert not RetryPolicy().wants_retry(error)


@pytest.mark.parametrize(
    "error",
    [
        TypeError("bug"),
        AttributeError("bug"),
        NameError("bug"),
        AssertionError("bug"),
        NotImplementedError(),
        CircuitOpenError("payments", 1.0),
    ],
    ids=type,
)
def test_programming_errors_are_never_retried_even_when_configured(error: Exception) -> None:
    assert not RetryPolicy(retry_exceptions=(Exception,)).wants_retry(error)


def test_keyboard_interrupt_is_never_retried() -> None:
    assert not RetryPolicy(retry_exceptions=(BaseException,)).wants_retry(KeyboardInterrupt())


def test_an_http_status_error_is_judged_by_its_status() -> None:
    def status_error(status: int) -> httpx.HTTPStatusError:
        answer = response(status)
        return httpx.HTTPStatusError("bad", request=answer.request, response=answer)

    assert RetryPolicy().wants_retry(status_error(503))
    assert not RetryPolicy().wants_retry(status_error(404))


@pytest.mark.parametrize("method", ["GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE", "get"])
def test_idempotent_methods_may_be_retried(method: str) -> None:
    assert RetryPolicy().allows_method(method, httpx.Headers())


@pytest.mark.parametrize("method", ["POST", "PATCH", "CONNECT"])
def test_other_methods_are_not_retried_by_default(method: str) -> None:
    assert not RetryPolicy().allows_method(method, httpx.Headers())


def test_an_idempotency_key_makes_a_post_retryable() -> None:
    headers = httpx.Headers({"idempotency-key": "order-42"})
    assert RetryPolicy().allows_method("POST", headers)
    assert not RetryPolicy().allows_method("POST", httpx.Headers({"idempotency-key": ""}))


def test_retried_methods_can_be_configured() -> None:
    policy = RetryPolicy(retry_methods={"get", "post"})
    assert policy.allows_method("POST", None)
    assert not policy.allows_method("PUT", None)


def test_a_plain_function_has_no_method_and_is_the_callers_choice() -> None:
    assert RetryPolicy().allows_method(None, None)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("120", 120.0), (" 3 ", 3.0), ("0", 0.0)],
)
def test_retry_after_delta_seconds(value: str, seconds: float) -> None:
    assert parse_retry_after(value, NOW) == seconds


def test_retry_after_http_date_in_the_future() -> None:
    assert parse_retry_after(http_date(NOW + 30), NOW) == pytest.approx(30.0)


def test_retry_after_obsolete_date_forms_are_read_too() -> None:
    # RFC 9110 requires recipients to accept RFC 850 and asctime dates as well.
    # NOW is Tue, 14 Nov 2023 22:13:20 GMT.
    assert parse_retry_after("Tuesday, 14-Nov-23 22:13:21 GMT", NOW) == pytest.approx(1.0)
    assert parse_retry_after("Tue Nov 14 22:13:22 2023", NOW) == pytest.approx(2.0)


@pytest.mark.parametrize(
    "value",
    ["", "soon", "-5", "1.5", "1e3", "٣", http_date(NOW - 60), http_date(NOW)],
    ids=["empty", "word", "negative", "fraction", "exponent", "non-ascii-digit", "past", "now"],
)
def test_retry_after_that_gives_no_future_time_is_none(value: str) -> None:
    assert parse_retry_after(value, NOW) is None


def test_retry_after_replaces_the_backoff() -> None:
    delay = RetryPolicy().delay_after(1, response(503, **{"Retry-After": "7"}), now_epoch=NOW)
    assert delay == 7.0


def test_retry_after_is_capped_by_max_retry_after() -> None:
    policy = RetryPolicy(max_retry_after=3.0)
    assert policy.delay_after(1, response(429, **{"Retry-After": "3600"}), now_epoch=NOW) == 3.0


def test_a_retry_after_date_in_the_past_falls_back_to_the_backoff() -> None:
    past = response(503, **{"Retry-After": http_date(NOW - 60)})
    policy = RetryPolicy(backoff=2.0)
    assert policy.delay_after(1, past, now_epoch=NOW, sample=0.25) == 0.5


def test_retry_after_of_an_exception_is_ignored() -> None:
    policy = RetryPolicy(backoff=1.0)
    assert policy.delay_after(2, ConnectionError(), now_epoch=NOW, sample=0.5) == 1.0


def test_durations_accept_timedelta() -> None:
    policy = RetryPolicy(deadline=timedelta(seconds=45), per_try_timeout=timedelta(seconds=2))
    assert (policy.deadline, policy.per_try_timeout) == (45.0, 2.0)


@pytest.mark.parametrize(
    ("settings", "field"),
    [
        ({"attempts": 0}, "attempts"),
        ({"attempts": True}, "attempts"),
        ({"attempts": 2.5}, "attempts"),
        ({"deadline": 0}, "deadline"),
        ({"per_try_timeout": -1.0}, "per_try_timeout"),
        ({"backoff": float("nan")}, "backoff"),
        ({"max_retry_after": float("inf")}, "max_retry_after"),
        ({"retry_statuses": {200, 999}}, "retry_statuses"),
        ({"retry_methods": "GET"}, "retry_methods"),
        ({"retry_exceptions": (ValueError, "x")}, "retry_exceptions"),
        ({"budget": 0.2}, "budget"),
        ({"hooks": ("not callable",)}, "hooks"),
    ],
)
def test_invalid_settings_name_the_field(settings: dict[str, Any], field: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        RetryPolicy(**settings)
    assert caught.value.field == field
    assert str(caught.value).startswith(f"{field}: ")


@pytest.mark.parametrize("settings", [{"ratio": -0.1}, {"min_retries_per_second": float("nan")}])
def test_invalid_budget_names_the_field(settings: dict[str, float]) -> None:
    with pytest.raises(ConfigurationError) as caught:
        RetryBudget(**settings)
    assert caught.value.field == next(iter(settings))


def test_replace_validates_again() -> None:
    policy = RetryPolicy()
    assert policy.replace(attempts=5).attempts == 5
    with pytest.raises(ConfigurationError):
        policy.replace(attempts=0)


def test_values_are_frozen() -> None:
    details = RetryDetails("payments", 1, 0.1, ConnectionError())
    with pytest.raises(dataclasses.FrozenInstanceError):
        details.attempt = 2  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        RetryPolicy().attempts = 9  # type: ignore[misc]
