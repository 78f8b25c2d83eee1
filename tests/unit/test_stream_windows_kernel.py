"""The compiled windows pass is loaded off the hot path, once per process: a stream
store's ``prepare`` starts it (from numba's cache, or a build child first when the cache
is cold), reads are served by numpy meanwhile and by the pass once it is in, with the
same values; a build that fails for good leaves numpy serving, logged and counted, and
is not tried again, one killed by a signal is; stores share one load; closing the last
store stops a build in progress. Reads too large for the loop go to a worker thread.

A cold cache is a module of the test's own (a numba function with ``cache=True`` under a
fresh name in tmp_path), put where the pass's module would be (``kernel_load.MODULE``)."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY

from featurestore.sources.base import ViewQuery, ViewRead
from featurestore.streaming import kernel_load, serving, windows
from featurestore.streaming.serving import StreamSource
from featurestore.streaming.store import MemoryTileStore
from tests.unit.test_stream_views import DOC, MIN_US, parse, write

HANG_GUARD = 120.0  # seconds: only against a hang, never reached when the test passes
COLD = """import numba

@numba.njit("float64(float64)", cache=True)
def reduce_windows(x):
    return x + 1.0
"""


def loads(result: str) -> float:
    return (
        REGISTRY.get_sample_value("featurestore_stream_windows_kernel_loads_total", {"result": result}) or 0.0
    )


@pytest.fixture(autouse=True)
def not_loaded(monkeypatch: pytest.MonkeyPatch) -> None:
    """This process as if it had never loaded the pass (restored after the test)."""
    monkeypatch.setattr(windows, "_kernel", None)
    monkeypatch.setattr(kernel_load, "_failed", [])
    monkeypatch.setattr(kernel_load, "_task", None)
    monkeypatch.setattr(kernel_load, "_owners", set())


def cold_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, build_prefix: str = "") -> Path:
    """A module no process has compiled, as the pass; the build command imports it after
    ``build_prefix`` (Python statements); each run of the build appends a line to the
    file returned."""
    name = f"fs_cold_{uuid.uuid4().hex[:10]}"
    (tmp_path / f"{name}.py").write_text(COLD)
    runs = tmp_path / "builds"
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(kernel_load, "MODULE", name)
    code = "; ".join(
        s for s in (f"open({str(runs)!r}, 'a').write('run\\n')", build_prefix, f"import {name}") if s
    )
    monkeypatch.setattr(kernel_load, "BUILD_COMMAND", [sys.executable, "-c", code])
    return runs


def builds(runs: Path) -> int:
    return len(runs.read_text().splitlines()) if runs.exists() else 0


def clicks_store() -> tuple[StreamSource, ViewQuery]:
    defs = parse(DOC)
    view = defs.views["clicks"]
    store = MemoryTileStore()
    t0 = (time.time_ns() // 1000 // MIN_US) * MIN_US
    write(store, defs, [(str(k), t0 - m * MIN_US, float(k * m)) for k in range(30) for m in range(40)])
    return StreamSource("default", store, clock=lambda: t0 + 1), ViewQuery(
        view, list(range(30)), [0, 1, 5], 1
    )


async def test_prepare_loads_the_pass_in_the_background_and_reads_keep_their_values() -> None:
    source, query = clicks_store()
    [before] = await source.read([query])  # numpy: nothing loaded yet
    assert not windows.kernel_loaded()
    await source.prepare([query.view])
    assert await source.kernel_ready(HANG_GUARD)
    assert windows.kernel_loaded()
    [after] = await source.read([query])
    assert isinstance(before, ViewRead) and isinstance(after, ViewRead)
    assert (after.found, after.event_ts_us, after.columns) == (
        before.found,
        before.event_ts_us,
        before.columns,
    )
    await source.close()


async def test_a_cold_cache_is_built_by_a_child_process_then_loaded_without_compiling_here(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from numba.core import event

    runs = cold_module(tmp_path, monkeypatch)
    compiled_here: list[Any] = []

    class Count(event.Listener):  # every compile in this process, in any thread
        def on_start(self, ev: Any) -> None:
            compiled_here.append(ev)

        def on_end(self, ev: Any) -> None:
            pass

    source, query = clicks_store()
    with event.install_listener("numba:compile", Count()):
        await source.prepare([query.view])
        assert await source.kernel_ready(HANG_GUARD)
    assert builds(runs) == 1
    assert len(compiled_here) == 2  # the loads from the cache, refused: before and after taking the lock
    assert windows._kernel is not None and windows._kernel(1.0) == 2.0  # type: ignore[call-arg,arg-type]
    assert list((tmp_path / "__pycache__").glob(f"{kernel_load.MODULE}.reduce_windows-*.nbi"))
    windows.use_kernel(None)  # the stand-in assembles no windows
    await source.close()


async def test_a_build_that_fails_leaves_numpy_serving_logged_counted_and_not_tried_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    runs = cold_module(tmp_path, monkeypatch, build_prefix="raise SystemExit('no llvm here')")
    failed = loads("failed")
    source, query = clicks_store()
    with caplog.at_level(logging.WARNING, logger=kernel_load.__name__):
        await source.prepare([query.view])
        assert not await source.kernel_ready(HANG_GUARD)
    assert not windows.kernel_loaded()
    assert loads("failed") == failed + 1
    assert "the build process exited 1: no llvm here" in caplog.text
    [read] = await source.read([query])
    assert isinstance(read, ViewRead) and all(read.found)
    await source.prepare([query.view])  # the next swap
    assert not await source.kernel_ready(HANG_GUARD)
    assert builds(runs) == 1
    await source.close()


async def test_a_build_killed_by_a_signal_is_tried_again_by_the_next_prepare(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = tmp_path / "first"
    kill_first = f"import os, signal, pathlib; p = pathlib.Path({str(first)!r}); k = not p.exists(); p.touch(); k and os.kill(os.getpid(), signal.SIGKILL)"
    runs = cold_module(tmp_path, monkeypatch, build_prefix=kill_first)
    source, query = clicks_store()
    await source.prepare([query.view])
    assert not await source.kernel_ready(HANG_GUARD)  # killed (the OOM killer, say)
    await source.prepare([query.view])
    assert await source.kernel_ready(HANG_GUARD)
    assert builds(runs) == 2
    windows.use_kernel(None)
    await source.close()


async def test_two_stores_share_one_load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    runs = cold_module(tmp_path, monkeypatch)
    (a, query), (b, _) = clicks_store(), clicks_store()
    await a.prepare([query.view])
    await b.prepare([query.view])
    assert await a.kernel_ready(HANG_GUARD) and await b.kernel_ready(HANG_GUARD)
    assert builds(runs) == 1
    windows.use_kernel(None)
    await a.close()
    await b.close()


async def test_closing_the_last_store_stops_a_build_in_progress(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pid_file = tmp_path / "pid"
    cold_module(
        tmp_path,
        monkeypatch,
        build_prefix=f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(600)",
    )
    (a, query), (b, _) = clicks_store(), clicks_store()
    await a.prepare([query.view])
    await b.prepare([query.view])
    for _ in range(int(HANG_GUARD / 0.05)):
        if pid_file.exists() and pid_file.read_text():
            break
        await asyncio.sleep(0.05)
    pid = int(pid_file.read_text())
    await a.close()
    os.kill(pid, 0)  # b still needs it: the build goes on
    await b.close()
    with pytest.raises(ProcessLookupError):  # killed and reaped
        os.kill(pid, 0)
    assert not windows.kernel_loaded()
    assert not kernel_load._failed  # a stopped load is no failure: a later store tries again


@pytest.mark.parametrize(("keys", "tiles", "threaded"), [(30, 1, False), (600, 1, True), (30, 40, False)])
async def test_a_read_making_many_values_is_assembled_in_a_worker_thread_even_of_few_records(
    monkeypatch: pytest.MonkeyPatch, keys: int, tiles: int, threaded: bool
) -> None:
    """6 aggregations: 600 keys x 6 = 3,600 values, over a limit of 1,000 (scaled down
    from 20,000 with the records' limit); 30 x 40 = 1,200 records, under it."""
    from featurestore.streaming import kernel

    windows.use_kernel(kernel.reduce_windows)
    monkeypatch.setattr(serving, "THREAD_READ_VALUES", 1_000)
    monkeypatch.setattr(serving, "THREAD_READ_RECORDS_COMPILED", 2_000)
    in_thread: list[Any] = []
    real = asyncio.to_thread

    async def spy(fn: Any, *args: Any) -> Any:
        in_thread.append(fn)
        return await real(fn, *args)

    monkeypatch.setattr(asyncio, "to_thread", spy)
    defs = parse(DOC)
    view = defs.views["clicks"]
    store = MemoryTileStore()
    t0 = (time.time_ns() // 1000 // MIN_US) * MIN_US
    write(store, defs, [(str(k), t0 - m * MIN_US, 1.0) for k in range(keys) for m in range(tiles)])
    source = StreamSource("default", store, clock=lambda: t0 + 1)
    [read] = await source.read([ViewQuery(view, list(range(keys)), list(range(6)), 1)])
    assert isinstance(read, ViewRead) and all(read.found) and read.columns[0] == [min(tiles, 5)] * keys
    assert bool(in_thread) is threaded


async def test_a_worker_finding_another_building_waits_and_loads_what_it_built(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The build lock of a server's workers: this process finds the cache cold while
    another holds the lock and builds; it waits, then loads without building."""
    import subprocess

    from featurestore.derived import buildlock

    runs = cold_module(tmp_path, monkeypatch)
    monkeypatch.setattr(kernel_load, "_lock_dir", lambda: tmp_path)
    source, query = clicks_store()
    async with buildlock.held(tmp_path, HANG_GUARD):  # the other worker
        await source.prepare([query.view])
        env = {**os.environ, "PYTHONPATH": str(tmp_path)}
        await asyncio.to_thread(
            subprocess.run, kernel_load.BUILD_COMMAND, env=env, check=True, timeout=HANG_GUARD
        )
        assert not windows.kernel_loaded()  # still waiting for the lock
    assert await source.kernel_ready(HANG_GUARD)
    assert builds(runs) == 1  # the other worker's
    windows.use_kernel(None)
    await source.close()


def test_the_build_lock_lives_in_numbas_cache_directory_or_the_users_cache_or_tmp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NUMBA_CACHE_DIR", str(tmp_path / "numba"))
    assert kernel_load._lock_dir() == tmp_path / "numba" and (tmp_path / "numba").is_dir()
    monkeypatch.delenv("NUMBA_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert kernel_load._lock_dir() == tmp_path / "cache" / "featurestore" / "stream"
    monkeypatch.delenv("XDG_CACHE_HOME")

    def homeless() -> Path:
        raise RuntimeError("Could not determine home directory.")

    monkeypatch.setattr(Path, "home", staticmethod(homeless))
    monkeypatch.setattr(tempfile, "gettempdir", lambda: str(tmp_path / "tmp"))
    assert kernel_load._lock_dir() == tmp_path / "tmp" / "featurestore-stream"
