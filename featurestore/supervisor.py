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
    started: dict[int, float] = {}
    backoff: dict[int, float] = {}
    restart_at: dict[int, float] = {}
    stopping = False

    def spawn(slot: int) -> None:
        # The slot names the worker in lineage (stable across restarts) and lets it
        # share the ports with its siblings.
        worker_env = {**env, WORKER_ENV: str(slot), REUSE_PORT_ENV: "1"}
        procs[slot] = subprocess.Popen(worker_argv, env=worker_env, preexec_fn=_die_with_parent)
        started[slot] = time.monotonic()

    def forward(sig: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        restart_at.clear()
        for p in procs.values():
            if p.poll() is None:
                p.send_signal(sig)

    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGTERM, forward)
    for slot in range(workers):
        spawn(slot)
    code = 0
    try:
        while procs or restart_at:
            time.sleep(0.2)
            now = time.monotonic()
            for slot, p in list(procs.items()):
                rc = p.poll()
                if rc is None:
                    continue
                del procs[slot]
                metrics.mark_worker_dead(p.pid, metrics_dir)
                if stopping:
                    code = code or (rc if rc > 0 else 0)
                    continue
                # A worker that cannot start (bad config, port taken) must not be
                # respawned several times a second forever: back off, and forgive
                # once a worker has lived a while.
                delay = (
                    _RESTART_MIN_S if now - started[slot] > _RESTART_FORGIVE_S else backoff.get(slot, 0) * 2
                )
                backoff[slot] = min(max(delay, _RESTART_MIN_S), _RESTART_MAX_S)
                restart_at[slot] = now + backoff[slot]
                log.error("worker %d exited with %s; restarting in %.1f s", p.pid, rc, backoff[slot])
            for slot, at in list(restart_at.items()):
                if at <= now and not stopping:
                    del restart_at[slot]
                    spawn(slot)
    finally:
        for f in Path(metrics_dir).glob("*.db"):
            f.unlink()
        os.rmdir(metrics_dir)
    return code


_RESTART_MIN_S = 0.5
_RESTART_MAX_S = 30.0
_RESTART_FORGIVE_S = 60.0


def _die_with_parent() -> None:
    """Runs in the child before exec: if the supervisor is killed outright (SIGKILL,
    OOM), its workers get SIGTERM and drain instead of holding the ports as orphans."""
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


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
