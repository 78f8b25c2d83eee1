"""The process harness itself, on a tiny Python child: a failed start leaves nothing
running, and a stop always ends the process."""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import pytest

from tests.harness import ManagedProcess

# Touches its ready file unless told not to, then waits for signals; SIGTERM exits 0
# unless it is told to ignore it. "busy": four threads spin beside the waiting main
# thread, as a broker's workers serve while its main thread sleeps.
CHILD = """
import pathlib, signal, sys, threading
ready, mode = sys.argv[1:3]
if mode == "crash":
    print("cannot start: no config", flush=True)
    sys.exit(3)
def spin():
    while True:
        pass
if mode == "busy":
    for _ in range(4):
        threading.Thread(target=spin, daemon=True).start()
signal.signal(signal.SIGTERM, signal.SIG_IGN if mode == "stubborn" else (lambda *_: sys.exit(0)))
if mode != "mute":
    pathlib.Path(ready).touch()
while True:
    signal.pause()
"""


class Child(ManagedProcess):
    def __init__(self, tmp: Path, mode: str = "serve") -> None:
        super().__init__(f"child ({mode})", tmp / "child.log")
        self.ready_file = tmp / "ready"
        self.mode = mode

    def command(self) -> list[str]:
        return [sys.executable, "-c", CHILD, str(self.ready_file), self.mode]

    def answers(self) -> bool:
        return self.ready_file.exists()


def test_a_process_that_exits_during_start_fails_it_with_its_code_and_log(tmp_path: Path) -> None:
    child = Child(tmp_path, "crash")
    with pytest.raises(RuntimeError, match=r"child \(crash\) exited with 3; log: cannot start: no config"):
        child.start()
    assert not child.running


def test_a_process_that_never_answers_is_killed_when_the_start_gives_up(tmp_path: Path) -> None:
    child = Child(tmp_path, "mute")
    with pytest.raises(TimeoutError, match="child"):
        child.start(timeout=0.5)
    assert not child.running and child.proc is not None and child.proc.returncode == -signal.SIGKILL


def test_a_paused_process_still_stops_on_sigterm(tmp_path: Path) -> None:
    child = Child(tmp_path).start()
    child.pause()
    assert child.stop() == 0  # continued, so its SIGTERM handler ran
    assert child.stop() == 0  # stopping twice is harmless


def thread_states(pid: int) -> list[str]:
    """The state letter of each of the process's threads (R, S, T: stopped, ...)."""
    tasks = sorted(Path(f"/proc/{pid}/task").iterdir())
    return [(t / "stat").read_text().rsplit(")", 1)[1].split()[0] for t in tasks]


def test_every_thread_of_a_paused_process_is_stopped_when_pause_returns(tmp_path: Path) -> None:
    """SIGSTOP stops a process asynchronously: the kernel wakes one thread to act on it and
    the others run on until it does, so a loaded machine let a broker "paused" that way
    take the next request (the lineage dead-letter test's flake). pause() returns once
    they all have stopped."""
    child = Child(tmp_path, "busy").start()
    try:
        for _ in range(20):
            child.pause()
            assert child.proc is not None
            assert set(thread_states(child.proc.pid)) == {"T"}
            child.resume()
    finally:
        child.kill()


def test_pausing_a_process_that_has_exited_says_so_with_its_exit_code(tmp_path: Path) -> None:
    child = Child(tmp_path).start()
    assert child.proc is not None
    child.proc.kill()
    child.proc.wait()
    with pytest.raises(RuntimeError, match="exited with -9"):
        child.pause()


def test_a_process_that_ignores_sigterm_is_killed_after_the_stop_timeout(tmp_path: Path) -> None:
    child = Child(tmp_path, "stubborn").start()
    assert child.stop(timeout=0.5) == -signal.SIGKILL


def test_a_stopped_process_restarts_with_the_same_command(tmp_path: Path) -> None:
    child = Child(tmp_path).start()
    first = child.proc
    child.ready_file.unlink()
    try:
        child.restart()
        assert child.running and child.proc is not first and child.ready_file.exists()
    finally:
        child.stop()
