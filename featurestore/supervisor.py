"""Several serving processes on one host: a small supervisor.

Each worker is a full ``featurestore serve --workers 1`` process (one event loop, HTTP
and gRPC) binding the same ports with SO_REUSEPORT, so the kernel spreads connections.
The supervisor sets PROMETHEUS_MULTIPROC_DIR first (``/metrics`` aggregates all
workers), restarts a worker that dies, and forwards SIGINT/SIGTERM so every worker
drains before exit.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from featurestore import metrics

log = logging.getLogger("featurestore")

WORKER_ENV = "FEATURESTORE_WORKER"
REUSE_PORT_ENV = "FEATURESTORE_REUSE_PORT"


def supervise(workers: int, worker_argv: list[str]) -> int:
    """Start ``workers`` copies of ``worker_argv``; restart crashes; forward signals."""
    metrics_dir = tempfile.mkdtemp(prefix="featurestore-metrics-")
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": metrics_dir}
    procs: dict[int, subprocess.Popen[bytes]] = {}
    stopping = False

    def spawn(slot: int) -> None:
        # The slot names the worker in lineage (stable across restarts) and lets it
        # share the ports with its siblings.
        worker_env = {**env, WORKER_ENV: str(slot), REUSE_PORT_ENV: "1"}
        procs[slot] = subprocess.Popen(worker_argv, env=worker_env)

    def forward(sig: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        for p in procs.values():
            if p.poll() is None:
                p.send_signal(sig)

    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGTERM, forward)
    for slot in range(workers):
        spawn(slot)
    code = 0
    try:
        while procs:
            time.sleep(0.2)
            for slot, p in list(procs.items()):
                rc = p.poll()
                if rc is None:
                    continue
                metrics.mark_worker_dead(p.pid)
                if stopping:
                    del procs[slot]
                    code = code or (rc if rc > 0 else 0)
                else:
                    log.error("worker %d exited with %s; restarting", p.pid, rc)
                    time.sleep(0.5)
                    spawn(slot)
    finally:
        for f in Path(metrics_dir).glob("*.db"):
            f.unlink()
        os.rmdir(metrics_dir)
    return code


def worker_argv_from(argv: list[str]) -> list[str]:
    """The command line of one worker: the same ``serve`` with ``--workers 1``."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a == "--workers":
            skip = True
            continue
        if a.startswith("--workers="):
            continue
        out.append(a)
    return [sys.executable, "-m", "featurestore.cli", *out, "--workers", "1", "--no-apply"]
