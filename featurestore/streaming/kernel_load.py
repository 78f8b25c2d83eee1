"""Loading the compiled windows pass (``kernel.py``) off the hot path.

``load`` is started in the background by the first stream view's ``prepare``: a child
process at a lower priority imports the kernel module, which compiles the pass into
numba's on-disk cache (~1 CPU-second, once per machine and numba version), then this
process imports it in a thread (a cache load: ~0.5 s, most of it importing numba) and
``windows.use_kernel`` switches to it. Until then, and for good if the pass does not
load (logged once, counted in ``featurestore_stream_windows_kernel_loads_total``),
windows are assembled in numpy: the same answers, slower. No request waits for it.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import sys
import time

from featurestore import metrics
from featurestore.derived.compiler import BUILD_TIMEOUT_SECONDS, build_env, dying_with_parent
from featurestore.streaming import windows

log = logging.getLogger(__name__)

MODULE = "featurestore.streaming.kernel"
BUILD_COMMAND = [
    sys.executable,
    "-c",
    f"from featurestore.derived.build import lower_priority; lower_priority(); import {MODULE}",
]

_failed: list[str] = []  # the error of a load that failed in this process: not tried again


async def load() -> bool:
    """Make the compiled pass serve; whether it does. Cancelling stops the build child
    (a thread already importing finishes, and the pass is then used)."""
    if windows.kernel_loaded():
        return True
    if _failed:
        return False
    t0 = time.perf_counter()
    try:
        if MODULE not in sys.modules:
            await _build()
        module = await asyncio.to_thread(importlib.import_module, MODULE)
    except Exception as e:
        _failed.append(f"{type(e).__name__}: {e}")
        metrics.STREAM_WINDOWS_KERNEL_LOADS.labels("failed").inc()
        log.warning("the compiled windows pass did not load: stream windows stay in numpy (%s)", _failed[0])
        return False
    if not windows.kernel_loaded():
        windows.use_kernel(module.reduce_windows)
        metrics.STREAM_WINDOWS_KERNEL_LOADS.labels("loaded").inc()
        log.info("stream windows: compiled pass loaded in %.2f s", time.perf_counter() - t0)
    return True


async def _build() -> None:
    argv, preexec_fn = dying_with_parent(BUILD_COMMAND)
    proc = await asyncio.create_subprocess_exec(
        *argv,
        env=build_env(),
        preexec_fn=preexec_fn,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        _, err = await asyncio.wait_for(proc.communicate(), BUILD_TIMEOUT_SECONDS)
    except BaseException:
        proc.kill()
        await proc.wait()
        raise
    if proc.returncode != 0:
        lines = err.decode(errors="replace").strip().splitlines()
        raise RuntimeError(f"the build process exited {proc.returncode}: {lines[-1] if lines else ''}")
