"""Stale metrics directories (featurestore/metrics_files.py): a supervisor's directory is
removed by the next start once its lock is free, whatever pid it recorded."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from featurestore.metrics_files import DIR_PREFIX, OWNER_NAME, new_dir, remove_stale


def test_a_directory_whose_lock_is_free_is_removed_though_its_pid_lives_as_in_a_container(
    tmp_path: Path,
) -> None:
    """In a container every supervisor is pid 1 (2 under an init): the pid a dead one
    recorded is a live process at the next start (review s55: nothing was ever removed)."""
    dead = tmp_path / (DIR_PREFIX + "dead")
    dead.mkdir()
    (dead / OWNER_NAME).write_text(f"{os.getpid()}\n")  # a live pid, the lock free
    assert remove_stale(str(tmp_path)) == [str(dead)]
    assert not dead.exists()


def test_a_directory_whose_supervisor_holds_its_lock_is_kept_and_one_without_owner_file_too(
    tmp_path: Path,
) -> None:
    live, fd = new_dir(str(tmp_path))  # this process: its lock held
    other = tmp_path / (DIR_PREFIX + "older-release")  # no owner file: not one to judge
    other.mkdir()
    try:
        assert remove_stale(str(tmp_path)) == []
        assert Path(live).exists() and other.exists()
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
    assert remove_stale(str(tmp_path)) == [live]
