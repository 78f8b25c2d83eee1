"""A kernel-build child dies with the worker that started it: a worker killed outright
(the supervisor's SIGKILL, the OOM killer) leaves no build compiling as an orphan. Real
processes: a parent running ``compiler``'s build as a serving worker does (uvloop), and a
build child hanging in the module it imports."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

from tests.support import is_running, wait_until

ROOT = Path(__file__).resolve().parents[2]

# The worker's side: build one module, on the loop a worker runs.
BUILDS = """
import asyncio, sys
from pathlib import Path
import uvloop
from featurestore.derived import compiler
with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
    runner.run(compiler._run_build({}, [Path(sys.argv[1])]))
"""

# A module whose import (the build) never ends, once it has said which process it is in.
HANGS = """
import os, pathlib, signal
tmp = pathlib.Path(__file__).with_suffix(".tmp")
tmp.write_text(str(os.getpid()))
os.replace(tmp, pathlib.Path(__file__).with_suffix(".pid"))
while True:
    signal.pause()
"""


def test_a_build_child_is_killed_when_the_worker_that_started_it_is_killed(tmp_path: Path) -> None:
    module = tmp_path / "hangs.py"
    module.write_text(HANGS)
    pid_file = module.with_suffix(".pid")
    worker = subprocess.Popen([sys.executable, "-c", BUILDS, str(module)], cwd=ROOT, env=dict(os.environ))
    build = None
    try:
        wait_until(pid_file.exists, 60, "the build child to import the module")
        build = int(pid_file.read_text())
        assert worker.poll() is None
        worker.kill()
        worker.wait()
        wait_until(lambda: not is_running(build), 10, "the build child to die with its parent")
    finally:
        worker.kill()
        worker.wait()
        if build is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(build, signal.SIGKILL)


# A module that records the niceness of the process importing it (the build).
RECORDS_NICENESS = """
import os, pathlib
group = pathlib.Path("/proc/self/autogroup")
here = pathlib.Path(__file__)
here.with_suffix(".nice").write_text(str(os.nice(0)))
here.with_suffix(".group").write_text(group.read_text() if group.exists() else "")
here.with_suffix(".sid").write_text(f"{os.getsid(0)} {os.getpid()}")
"""


def test_a_build_child_runs_at_a_lower_priority_than_the_server_that_started_it(tmp_path: Path) -> None:
    from featurestore.derived.build import BUILD_NICENESS
    from featurestore.derived.compiler import build_command

    module = tmp_path / "records.py"
    module.write_text(RECORDS_NICENESS)
    subprocess.run(build_command([module]), cwd=ROOT, check=True, timeout=120)
    assert int(module.with_suffix(".nice").read_text()) == min(19, os.nice(0) + BUILD_NICENESS)
    # Where the kernel schedules by session (autogroup), niceness weighs only within the
    # session: the build leads a session of its own whose group is lowered as well.
    sid, pid = module.with_suffix(".sid").read_text().split()
    assert sid == pid
    group = module.with_suffix(".group").read_text()
    if group:
        assert group.split()[-2:] == ["nice", str(BUILD_NICENESS)], group
