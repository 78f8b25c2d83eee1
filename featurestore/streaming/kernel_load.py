"""Loading the compiled windows pass (``kernel.py``) off the hot path, once per process.

The first stream store handed a stream view (``StreamSource.prepare``) starts the load
in the background; every store shares it (``start``, ``release``). The load imports the
kernel module in a thread with compiles refused (``derived.loadguard``): from numba's
on-disk cache it is a load of machine code (~0.3 s, ~0.5 s with numba's import). Only
when the cache holds nothing loadable does a child process at a lower priority import
the module, compiling the pass into the cache (~1.3 s, ~1.4 CPU-seconds, once per cache
directory and numba version: a server's workers take turns under ``derived.buildlock``,
and those after the first load what it built), and the thread imports it again (where no
cache directory is writable, compiling it there: set ``NUMBA_CACHE_DIR``). LLVM's pages
are handed back after the import (``derived.pages``), as after a derived kernel's load:
a worker without derived views otherwise kept ~120 MB of them, ~55 MB with them released.

Until the pass is in, windows are assembled with numpy: the same values, slower. A
server waits for the load before it reports ready and freezes its heap (``settled``,
``process.py``), so requests see neither the numpy path nor the import (a thread importing
numba holds Python's lock in long stretches: the loop stalled up to ~30-38 ms). A load
that fails for good (the module does not import, the build exits with an error) is
logged once and counted in ``featurestore_stream_windows_kernel_loads_total{result="failed"}``,
and windows stay in numpy in that process; one that failed for a passing cause (the
build killed by a signal, e.g. the OOM killer, or past its time) is tried again by the
next ``prepare`` (a registry swap).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType

from featurestore import metrics
from featurestore.derived import buildlock
from featurestore.derived.compiler import BUILD_TIMEOUT_SECONDS, default_cache_dir, run_child
from featurestore.derived.loadguard import CompileDuringLoad, no_compile
from featurestore.derived.pages import prepare_numba, release_llvm_pages
from featurestore.streaming import windows

log = logging.getLogger(__name__)

MODULE = "featurestore.streaming.kernel"
BUILD_COMMAND = [
    sys.executable,
    "-c",
    f"from featurestore.derived.build import lower_priority; lower_priority(); import {MODULE}",
]

_failed: list[str] = []  # the error of a load that failed for good in this process
_task: asyncio.Task[bool] | None = None  # the load in progress (or done), shared by the stores
_owners: set[object] = set()  # the stores that asked for it and are not closed


class _Passing(Exception):
    """A build that did not end by itself (a signal, its timeout): the next prepare retries."""


def start(owner: object) -> None:
    """``owner`` (a stream store) needs the pass: load it unless it is loaded, loading, or
    failed for good. ``release(owner)`` when it closes."""
    global _task
    _owners.add(owner)
    if windows.kernel_loaded() or _failed:
        return
    loop = asyncio.get_running_loop()
    if (
        _task is None
        or _task.get_loop() is not loop
        or _task.cancelled()
        or (_task.done() and not _task.result())
    ):
        _task = loop.create_task(_load())


async def release(owner: object) -> None:
    """``owner`` closed: when no store needs the pass any more, a load still running stops
    (its build process is killed)."""
    _owners.discard(owner)
    task = _task
    if not _owners and task is not None and not task.done() and task.get_loop() is asyncio.get_running_loop():
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def settled(wait_seconds: float) -> bool:
    """Wait up to ``wait_seconds`` for a load in progress; whether the pass serves."""
    task = _task
    if task is not None and not task.done() and task.get_loop() is asyncio.get_running_loop():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(task), wait_seconds)
    return windows.kernel_loaded()


async def _load() -> bool:
    t0 = time.perf_counter()
    try:
        try:
            module = await asyncio.to_thread(_import, True)
        except CompileDuringLoad:  # nothing loadable in the cache: build it, then load it
            async with buildlock.held(_lock_dir(), BUILD_TIMEOUT_SECONDS):
                try:  # a server's other workers wait here while the first one builds
                    module = await asyncio.to_thread(_import, True)
                except CompileDuringLoad:
                    await _build()
                    module = await asyncio.to_thread(_import, False)
    except _Passing as e:
        metrics.STREAM_WINDOWS_KERNEL_LOADS.labels("failed").inc()
        log.warning(
            "the compiled windows pass did not load: windows stay in numpy until the next try (%s)", e
        )
        return False
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


def _import(from_cache_only: bool) -> ModuleType:
    """The kernel module (in a worker thread), LLVM's pages released after each step."""
    prepare_numba()
    try:
        with no_compile(MODULE) if from_cache_only else contextlib.nullcontext():
            return importlib.import_module(MODULE)
    finally:
        release_llvm_pages()


def _lock_dir() -> Path:
    """Where the workers of a server (and the servers of a host) take turns building:
    numba's cache directory when it is set, else the user's featurestore cache (the
    temporary directory for a user without a home)."""
    try:
        where = Path(os.environ.get("NUMBA_CACHE_DIR") or default_cache_dir().parent / "stream")
    except RuntimeError:  # no home directory to find (no HOME, a uid without a passwd entry)
        where = Path(tempfile.gettempdir()) / "featurestore-stream"
    with contextlib.suppress(OSError):  # unwritable: buildlock builds without the lock
        where.mkdir(parents=True, exist_ok=True)
    return where


async def _build() -> None:
    try:
        returncode, _, err = await run_child(BUILD_COMMAND)
    except TimeoutError:
        raise _Passing(f"the build process did not finish within {BUILD_TIMEOUT_SECONDS:g} s") from None
    if returncode < 0:
        raise _Passing(f"the build process was killed by signal {-returncode}")
    if returncode != 0:
        lines = err.decode(errors="replace").strip().splitlines()
        raise RuntimeError(f"the build process exited {returncode}: {lines[-1] if lines else ''}")
