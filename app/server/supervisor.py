"""The workers of ``serve --workers N`` stop when the process that started them dies.

uvicorn starts a multi-worker server's workers with multiprocessing ('spawn') and
stops them when it stops. Killed outright (SIGKILL, the OOM killer), it stops nothing:
its workers went on serving on the socket they inherited, with nobody to restart or
stop them. So ``serve`` names itself in ``SUPERVISOR_ENV``, which its workers inherit,
and each worker checks twice a second that this process is still its parent. Once it
is not, the worker stops itself as uvicorn would have stopped it: SIGTERM, a graceful
shutdown.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Mapping

logger = logging.getLogger("fleetbreaker.gateway")

#: Set by ``serve`` for its workers: the pid of the process that started them.
SUPERVISOR_ENV = "FLEETBREAKER_SUPERVISOR_PID"
#: How often a worker looks at its parent, in seconds.
CHECK_EVERY = 0.5


def supervisor_of(environ: Mapping[str, str]) -> int | None:
    """The supervisor's pid that ``serve`` set for this worker, or None (one worker,
    or an app not started by ``serve``)."""
    value = environ.get(SUPERVISOR_ENV, "")
    return int(value) if value.isdigit() else None


async def stop_when_orphaned(supervisor: int, every: float = CHECK_EVERY) -> None:
    """Wait until ``supervisor`` is no longer this process's parent (it died, and the
    worker was handed to another), then SIGTERM this process."""
    while os.getppid() == supervisor:  # noqa: ASYNC110 - no event tells of a parent's death
        await asyncio.sleep(every)
    logger.warning(
        "the serve process %d is gone: stopping this worker",
        supervisor,
        extra={"fields": {"event": "orphaned", "supervisor": supervisor}},
    )
    os.kill(os.getpid(), signal.SIGTERM)
