"""Temporary folders named after the process that owns them, so that the next start
can remove those whose owner was killed outright.

``serve --workers N`` keeps prometheus-client's multiprocess files in one, and
``fleet`` its Redis data and nginx files in another. Each removes its folder when it
stops; a SIGKILL leaves no handler to run, so the folder stayed behind forever. Each
is now named ``fleetbreaker-<kind>-<pid>-<random>``: a start removes every such
folder whose pid is no longer running. A pid reused since by another process keeps
its folder until that process is gone too; nothing is removed that may be in use.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path

#: The kinds of folder ``fleetbreaker`` makes; ``remove_orphans`` looks only at these.
KINDS = ("metrics", "fleet")
_NAME = re.compile(rf"^fleetbreaker-(?:{'|'.join(KINDS)})-(\d+)-")


def owned_tempdir(kind: str) -> Path:
    """A new folder in the temporary directory, named after ``kind`` and this process."""
    assert kind in KINDS
    return Path(tempfile.mkdtemp(prefix=f"fleetbreaker-{kind}-{os.getpid()}-"))


def owner_of(name: str) -> int | None:
    """The pid in a folder name made by ``owned_tempdir``; None for any other name.

    >>> owner_of("fleetbreaker-metrics-4242-k2j_9x"), owner_of("fleetbreaker-metrics-k2j")
    (4242, None)
    """
    found = _NAME.match(name)
    return int(found[1]) if found else None


def is_running(pid: int) -> bool:
    """Whether a process ``pid`` exists (one of another user's included)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _ours(path: Path) -> bool:
    """A folder (not a link) of this user: the temporary directory is everyone's."""
    try:
        status = path.lstat()
    except OSError:
        return False
    return stat.S_ISDIR(status.st_mode) and status.st_uid == os.getuid()


def remove_orphans(
    where: Path | None = None, running: Callable[[int], bool] = is_running
) -> list[Path]:
    """Remove the folders of ``owned_tempdir`` whose owner is no longer running; the
    folders removed."""
    removed = []
    for path in Path(where or tempfile.gettempdir()).glob("fleetbreaker-*"):
        owner = owner_of(path.name)
        if owner is None or owner == os.getpid() or not _ours(path) or running(owner):
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed
