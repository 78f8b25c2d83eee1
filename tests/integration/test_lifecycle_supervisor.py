"""A supervisor killed outright (SIGKILL, the OOM killer) cannot remove its metrics
directory; in Kubernetes ``/tmp`` outlives the container's restarts, and review s55
found 52 left on one machine. The next supervisor to start removes it, and only what is
identified as a dead supervisor's: a directory without the owner file, or one whose
supervisor lives, stays."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from tests.integration.test_cli_and_lifecycle import _children
from tests.integration.test_workers import metrics_dir_of
from tests.support import ServerProcess, is_running, wait_until


def supervised(tmp_path: Path, test_repo: Path, temp: Path, name: str) -> ServerProcess:
    config = tmp_path / "config.yaml"
    config.write_text(
        f"registry: {{path: {tmp_path / 'registry'}}}\nstores: {{default: {{kind: memory}}, local: {{kind: memory}}}}\n"
    )
    return ServerProcess(
        ["--config", str(config), "--definitions", str(test_repo), "--workers", "2"],
        env={"TMPDIR": str(temp)},  # its metrics directory there, not in the machine's /tmp
        log_path=tmp_path / f"{name}.log",
    ).start()


def test_the_metrics_directory_of_a_killed_supervisor_is_removed_at_the_next_start_and_no_other(
    tmp_path: Path, test_repo: Path
) -> None:
    temp = tmp_path / "tmp"
    temp.mkdir()
    earlier = temp / "featurestore-metrics-earlier"  # an earlier version's: no owner file
    earlier.mkdir()
    (earlier / "counter_123.db").write_bytes(b"")
    unrelated = temp / "something-else"
    unrelated.mkdir()

    first = supervised(tmp_path, test_repo, temp, "first")
    second: ServerProcess | None = None
    try:
        assert first.proc is not None
        wait_until(lambda: len(_children(first.proc.pid)) == 2, 20, "two workers")  # type: ignore[union-attr]
        workers = _children(first.proc.pid)
        killed_dir = metrics_dir_of(workers[0])
        assert killed_dir.parent == temp
        os.kill(first.proc.pid, signal.SIGKILL)
        first.proc.wait(10)
        wait_until(lambda: not any(is_running(pid) for pid in workers), 20, "its workers to end")
        assert killed_dir.exists()  # left behind

        second = supervised(tmp_path, test_repo, temp, "second")
        assert second.proc is not None
        wait_until(lambda: len(_children(second.proc.pid)) == 2, 20, "two workers")  # type: ignore[union-attr]
        own_dir = metrics_dir_of(_children(second.proc.pid)[0])
        assert not killed_dir.exists()
        assert (own_dir / "supervisor.pid").read_text() == f"{second.proc.pid}\n"  # what identified it
        assert (
            f"removed {killed_dir}: the metrics directory of a supervisor no longer running"
            in second.read_log()
        )
        assert earlier.exists() and unrelated.exists() and own_dir.exists()
        assert sorted(p.name for p in temp.iterdir()) == sorted([earlier.name, unrelated.name, own_dir.name])
        assert second.stop() == 0
        assert not own_dir.exists()
    finally:
        first.stop()
        if second is not None:
            second.stop()
