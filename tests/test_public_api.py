"""The public surface stays small, sorted and typed."""

from __future__ import annotations

from importlib.resources import files

import breaker


def _isort_order(name: str) -> tuple[int, str]:
    """Constants, then classes, then functions, each alphabetical (ruff's RUF022)."""
    return (0 if name.isupper() else 1 if name[0].isupper() else 2, name)


def test_all_is_sorted_and_complete() -> None:
    assert breaker.__all__ == sorted(breaker.__all__, key=_isort_order)
    assert all(hasattr(breaker, name) for name in breaker.__all__)


def test_exception_tree_has_one_root() -> None:
    for name in ("CircuitOpenError", "BackendUnavailableError", "ConfigurationError"):
        assert issubclass(getattr(breaker, name), breaker.BreakerError)


def test_package_ships_py_typed_and_the_lua_sources() -> None:
    assert files("breaker").joinpath("py.typed").is_file()
    assert files("breaker._lua").joinpath("fleetbreaker.lua").is_file()
