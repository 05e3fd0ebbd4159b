"""Breaker names map to keys injectively, readably, and in one cluster slot."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from redis.crc import key_slot

from breaker import BreakerKeys, CircuitBreaker, ConfigurationError, escape_name, events_channel


def test_plain_names_and_urls_stay_readable() -> None:
    assert BreakerKeys.of("breaker", "payments").state == "breaker:{payments}"
    url = "https://api.example.com:443/v1"
    assert BreakerKeys.of("breaker", url).state == f"breaker:{{{url}}}"


def test_braces_percent_and_control_characters_are_escaped() -> None:
    assert escape_name("a}b{c%d") == "a%7Db%7Bc%25d"
    assert escape_name("line\nbreak\x00") == "line%0Abreak%00"


def test_a_name_cannot_reach_another_breakers_keys() -> None:
    victim = BreakerKeys.of("breaker", "payments")
    attacker = BreakerKeys.of("breaker", "payments}:window")
    assert set(attacker.as_list()).isdisjoint(victim.as_list())
    assert attacker.state == "breaker:{payments%7D:window}"


#: Breaker names: any text that is not blank (a blank one is refused).
NAMES = st.text(min_size=1, max_size=80).filter(str.strip)


@given(NAMES, NAMES)
def test_escaping_is_injective(first: str, second: str) -> None:
    if first != second:
        assert escape_name(first) != escape_name(second)


@given(NAMES)
def test_all_keys_of_a_breaker_share_one_hash_tag_and_slot(name: str) -> None:
    keys = BreakerKeys.of("breaker", name)
    tag = "{" + escape_name(name) + "}"
    assert all(key.count("}") == 1 and tag in key for key in keys.as_list())
    assert len({key_slot(key.encode()) for key in keys.as_list()}) == 1


@pytest.mark.parametrize("name", ["", "x" * 513])
def test_empty_or_huge_names_are_refused(name: str) -> None:
    with pytest.raises(ConfigurationError) as refused:
        BreakerKeys.of("breaker", name)
    assert refused.value.field == "name"


def test_events_channel_is_under_the_prefix() -> None:
    assert events_channel("breaker") == "breaker:events"


@pytest.mark.parametrize("name", ["", "   ", "\t", "\n"])
def test_a_blank_name_is_refused_naming_the_setting(name: str) -> None:
    with pytest.raises(ConfigurationError, match=r"^name: must be a non-blank string"):
        CircuitBreaker(name)
