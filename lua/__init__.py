"""Lua sources of the breaker scripts; shipped in the wheel as the package ``breaker._lua``."""
