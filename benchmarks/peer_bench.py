"""The peer's bench.py, counting the bench's own Redis as "the" Redis.

bench.py charges the CPU of ``pgrep -o -x redis-server`` (the oldest redis-server on the
machine) as ``redis_cores`` and everything else outside the servers and the load
generator as ``other_cores``, the figure that gates a run as clean. On a shared machine
the oldest redis-server may be another tenant's: the bench's own Redis would then count
as other tenants' CPU. ``benchmarks.run`` links this file into its overlay of the peer's
folder as ``bench.py`` (the peer's own as ``bench_peer.py``) and names its Redis in
``BENCH_REDIS_PID``; this loads the peer's bench.py from the overlay (so it finds the
overlay's wrk script and loadgen.py next to itself, as before), makes its ``find_pid``
answer that pid for ``redis-server``, and runs its ``main``. Without ``BENCH_REDIS_PID``,
or with a pid that is not a live redis-server, it refuses to start (exit 2).

Runs under the peer's venv Python: standard library only.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from types import ModuleType
from typing import Any

PEER_NAME = "bench_peer.py"  # the peer's bench.py, linked beside this file in the overlay
PID_ENV = "BENCH_REDIS_PID"


def redis_server_pid(text: str | None) -> int:
    """``text`` as the pid of a live redis-server process, or ``SystemExit(2)`` saying why."""
    if not text:
        raise SystemExit(
            f"bench.py (overlay): {PID_ENV} is not set: the bench's Redis is unknown, not running"
        )
    try:
        pid = int(text)
        with open(f"/proc/{pid}/comm") as fh:
            comm = fh.read().strip()
    except (ValueError, OSError) as e:
        raise SystemExit(f"bench.py (overlay): {PID_ENV}={text!r} is not a live process ({e})") from e
    if comm != "redis-server":
        raise SystemExit(f"bench.py (overlay): {PID_ENV}={pid} is {comm!r}, not a redis-server")
    return pid


def load_peer(here: str) -> ModuleType:
    path = os.path.join(here, PEER_NAME)
    spec = importlib.util.spec_from_file_location("bench_peer", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"bench.py (overlay): cannot load the peer's bench.py from {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    pid = redis_server_pid(os.environ.get(PID_ENV))
    # Not the resolved path: the overlay's folder, where the wrk script and loadgen.py are.
    here = os.path.dirname(os.path.abspath(sys.argv[0]))
    peer: Any = load_peer(here)  # the peer's bench.py: find_pid and main, untyped
    peer_find = peer.find_pid

    def find_pid(name: str) -> int | None:
        return pid if name == "redis-server" else peer_find(name)

    peer.find_pid = find_pid
    peer.main()


if __name__ == "__main__":
    main()
