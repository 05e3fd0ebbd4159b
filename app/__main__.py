"""``python -m fleetbreaker [command]``: the same as the ``fleetbreaker`` command."""

from __future__ import annotations

import sys

from .cli import main

sys.exit(main())
