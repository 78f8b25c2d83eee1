"""The supervisor's stop signal reaches every worker, whenever it arrives. The workers
here are tiny Python processes that exit 0 on SIGTERM, so the test needs no server."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
from typing import Any

import pytest

from featurestore.supervisor import Supervisor

# Waits for a signal and exits 0 on SIGTERM, as a draining worker does. (Left behind, it
# still goes: the supervisor starts workers to die with it.)
WORKER = [
    sys.executable,
    "-c",
    "import signal, sys\nsignal.signal(signal.SIGTERM, lambda *_: sys.exit(0))\nwhile True: signal.pause()\n",
]


def run_with_deadline(sup: Supervisor, seconds: float = 15) -> int:
    result: list[int] = []
    t = threading.Thread(target=lambda: result.append(sup.run()), daemon=True)
    t.start()
    t.join(seconds)
    alive = [p for p in sup.procs.values() if p.poll() is None]
    for p in alive:  # never leave a worker behind, even when the test fails
        p.kill()
        p.wait()
    assert not t.is_alive() and not alive, "the supervisor did not stop its workers"
    return result[0]


def test_a_signal_that_arrives_while_a_worker_is_being_spawned_still_stops_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sup = Supervisor(2, WORKER)
    real_popen = subprocess.Popen
    spawned = 0

    def popen_interrupted_by_sigterm(*args: Any, **kwargs: Any) -> subprocess.Popen[bytes]:
        # Python runs a signal handler between bytecodes: here, after the first worker
        # is in `procs` and before the second one's Popen has returned.
        nonlocal spawned
        spawned += 1
        if spawned == 2:
            sup.on_signal(signal.SIGTERM, None)
        return real_popen(*args, **kwargs)

    monkeypatch.setattr(subprocess, "Popen", popen_interrupted_by_sigterm)
    assert run_with_deadline(sup) == 0
    assert spawned == 2


def test_a_signal_before_any_worker_starts_starts_none() -> None:
    sup = Supervisor(2, WORKER)
    sup.on_signal(signal.SIGTERM, None)
    assert run_with_deadline(sup) == 0
    assert not sup.procs
