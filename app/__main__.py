"""``python -m app [serve options]``: the same as ``fleetbreaker serve``."""

from __future__ import annotations

import sys

from .cli import main

sys.exit(main(["serve", *sys.argv[1:]]))
