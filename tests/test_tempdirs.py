"""Temporary folders carry their owner's pid, and only those of processes that are
gone are removed. ``tests/test_orphans.py`` kills a real serve to leave one."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.localfleet.tempdirs import owned_tempdir, owner_of, remove_orphans


def test_a_folder_is_named_after_its_owner(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr("tempfile.tempdir", None)  # read TMPDIR again
    folder = owned_tempdir("fleet")
    assert folder.parent == tmp_path
    assert owner_of(folder.name) is not None


def test_only_the_folders_of_processes_that_are_gone_are_removed(tmp_path: Path) -> None:
    gone, alive = 4242, 4343
    orphan = tmp_path / f"fleetbreaker-metrics-{gone}-abc"
    in_use = tmp_path / f"fleetbreaker-fleet-{alive}-def"
    unknown = tmp_path / "fleetbreaker-metrics-ghi"  # an older name: no owner to ask
    other = tmp_path / f"something-metrics-{gone}-jkl"
    for folder in (orphan, in_use, unknown, other):
        folder.mkdir()
    assert remove_orphans(tmp_path, running=lambda pid: pid == alive) == [orphan]
    assert sorted(tmp_path.iterdir()) == sorted([in_use, unknown, other])
