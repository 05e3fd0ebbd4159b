"""How a command ends: its exit code, and the one-line error that ends it.

0 done; 1 Redis could not be reached (also ``serve`` with ``require_redis``); 2 bad
usage, bad configuration, a port in use, an unknown breaker or a command that runs the
gateway without the gateway extra installed; 3 uvicorn could not start the server,
which it logs.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_UNREACHABLE = 1
EXIT_USAGE = 2


class CommandError(Exception):
    def __init__(self, message: str, code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.code = code
