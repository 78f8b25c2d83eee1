"""The compiled windows pass is loaded off the hot path: a stream store's ``prepare``
starts it (a build child, then an import in a thread), reads are served by numpy
meanwhile and by the pass once it is in, with the same values; a build that fails
leaves numpy serving, logged and counted; closing the store stops a build in progress."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from featurestore.sources.base import ViewQuery, ViewRead
from featurestore.streaming import kernel_load, windows
from featurestore.streaming.serving import StreamSource
from featurestore.streaming.store import MemoryTileStore
from tests.unit.test_stream_views import DOC, MIN_US, parse, write

HANG_GUARD = 60.0  # seconds: only against a hang, never reached when the test passes


def loads(result: str) -> float:
    return (
        REGISTRY.get_sample_value("featurestore_stream_windows_kernel_loads_total", {"result": result}) or 0.0
    )


@pytest.fixture
def not_loaded(monkeypatch: pytest.MonkeyPatch) -> None:
    """This process as if it had never loaded the pass (restored after the test)."""
    monkeypatch.setattr(windows, "_kernel", None)
    monkeypatch.setattr(kernel_load, "_failed", [])


def clicks_store() -> tuple[StreamSource, ViewQuery, int]:
    defs = parse(DOC)
    view = defs.views["clicks"]
    store = MemoryTileStore()
    t0 = (time.time_ns() // 1000 // MIN_US) * MIN_US
    write(store, defs, [(str(k), t0 - m * MIN_US, float(k * m)) for k in range(30) for m in range(40)])
    return (
        StreamSource("default", store, clock=lambda: t0 + 1),
        ViewQuery(view, list(range(30)), [0, 1], 1),
        t0,
    )


@pytest.mark.usefixtures("not_loaded")
async def test_prepare_loads_the_pass_in_the_background_and_reads_keep_their_values() -> None:
    source, query, _ = clicks_store()
    [before] = await source.read([query])  # numpy: nothing loaded yet
    assert not windows.kernel_loaded()
    await source.prepare([query.view])
    assert await asyncio.wait_for(source.kernel_ready(), HANG_GUARD)
    assert windows.kernel_loaded()
    [after] = await source.read([query])
    assert isinstance(before, ViewRead) and isinstance(after, ViewRead)
    assert (after.found, after.event_ts_us, after.columns) == (
        before.found,
        before.event_ts_us,
        before.columns,
    )
    await source.close()


@pytest.mark.usefixtures("not_loaded")
async def test_a_build_that_fails_leaves_numpy_serving_logged_and_counted(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delitem(sys.modules, kernel_load.MODULE, raising=False)  # so the build runs
    monkeypatch.setattr(
        kernel_load, "BUILD_COMMAND", [sys.executable, "-c", "raise SystemExit('no llvm here')"]
    )
    failed = loads("failed")
    source, query, _ = clicks_store()
    with caplog.at_level(logging.WARNING, logger=kernel_load.__name__):
        await source.prepare([query.view])
        assert not await asyncio.wait_for(source.kernel_ready(), HANG_GUARD)
    assert not windows.kernel_loaded()
    assert loads("failed") == failed + 1
    assert "the build process exited 1: no llvm here" in caplog.text
    [read] = await source.read([query])
    assert isinstance(read, ViewRead) and all(read.found)
    assert not await kernel_load.load()  # not tried again in this process
    await source.close()


@pytest.mark.usefixtures("not_loaded")
async def test_closing_the_store_stops_a_build_in_progress(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    pid_file = tmp_path / "pid"
    monkeypatch.delitem(sys.modules, kernel_load.MODULE, raising=False)
    monkeypatch.setattr(
        kernel_load,
        "BUILD_COMMAND",
        [
            sys.executable,
            "-c",
            f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(600)",
        ],
    )
    source, query, _ = clicks_store()
    await source.prepare([query.view])
    for _ in range(int(HANG_GUARD / 0.05)):
        if pid_file.exists() and pid_file.read_text():
            break
        await asyncio.sleep(0.05)
    pid = int(pid_file.read_text())
    await source.close()
    with pytest.raises(ProcessLookupError):  # killed and reaped
        os.kill(pid, 0)
    assert not windows.kernel_loaded()
    assert not kernel_load._failed  # a cancelled load is no failure: a later store tries again
