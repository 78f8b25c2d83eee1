"""A stream view read large enough to assemble its windows in a worker thread, cancelled
(its deadline) while the thread works: the thread stops at the end of its current run
of keys instead of assembling every key's windows for nobody."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor

import pytest

from featurestore.sources.base import ViewQuery
from featurestore.streaming import serving
from featurestore.streaming.serving import THREAD_READ_RECORDS, StreamSource
from featurestore.streaming.store import MemoryTileStore
from featurestore.streaming.tiles import TileLayout, view_layout
from featurestore.streaming.windows import Windows, compute
from tests.unit.test_stream_views import DOC, MIN_US, parse, write

HANG_GUARD = 10.0  # seconds: only against a hang, never reached when the test passes
KEYS, TILES = 60, 60  # 3,600 tile records: over THREAD_READ_RECORDS, so assembled in a thread


class GatedCompute:
    """``compute`` noting the keys of each call; the first call waits for ``release``."""

    def __init__(self) -> None:
        self.keys: list[int] = []
        self.started, self.release = threading.Event(), threading.Event()

    def __call__(
        self, layout: TileLayout, blobs: Sequence[bytes | None], now_us: int, wanted: Sequence[int]
    ) -> Windows:
        self.keys.append(len(blobs))
        if len(self.keys) == 1:
            self.started.set()
            self.release.wait(HANG_GUARD)
        return compute(layout, blobs, now_us, wanted)


@pytest.fixture
async def one_worker_thread() -> AsyncIterator[ThreadPoolExecutor]:
    """The loop's default executor (asyncio.to_thread's) as one thread: a call queued
    after the read's runs only once they have stopped."""
    pool = ThreadPoolExecutor(1)
    asyncio.get_running_loop().set_default_executor(pool)
    yield pool
    pool.shutdown(wait=True)


async def test_a_cancelled_read_stops_assembling_windows_in_its_worker_thread(
    monkeypatch: pytest.MonkeyPatch, one_worker_thread: ThreadPoolExecutor
) -> None:
    defs = parse(DOC)
    view = defs.views["clicks"]
    store = MemoryTileStore()
    t0 = (time.time_ns() // 1000 // MIN_US) * MIN_US
    write(store, defs, [(str(k), t0 - m * MIN_US, 1.0) for k in range(KEYS) for m in range(TILES)])
    assert KEYS * TILES > THREAD_READ_RECORDS
    gated = GatedCompute()
    monkeypatch.setattr(serving, "compute", gated)
    monkeypatch.setattr(serving, "THREAD_READ_RECORDS_COMPILED", THREAD_READ_RECORDS)  # compiled or not
    monkeypatch.setattr(serving, "CHUNK_RECORDS", TILES * 10, raising=False)  # runs of 10 keys
    source = StreamSource("default", store, clock=lambda: t0 + 1)

    loop = asyncio.get_running_loop()
    read = asyncio.create_task(source.read([ViewQuery(view, list(range(KEYS)), [0], 1)]))
    with ThreadPoolExecutor(1) as waiter:  # not the loop's one thread: the read holds it
        assert await loop.run_in_executor(waiter, gated.started.wait, HANG_GUARD)
    read.cancel()  # its deadline
    with pytest.raises(asyncio.CancelledError):
        await read
    gated.release.set()
    await loop.run_in_executor(one_worker_thread, lambda: None)  # queued behind the read's: it has ended
    assert sum(gated.keys) < KEYS  # it stopped after the run it was in, not after every key


async def test_windows_assembled_in_runs_of_keys_are_those_of_one_pass(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    defs = parse(DOC)
    view = defs.views["clicks"]
    store = MemoryTileStore()
    t0 = (time.time_ns() // 1000 // MIN_US) * MIN_US
    with_tiles = [k for k in range(KEYS) if k % 5]  # the others have none: not found, in any run
    events: list[tuple[str, int, float | None]] = [
        (str(k), t0 - m * MIN_US, float(k + m)) for k in with_tiles for m in range(TILES - k % 7)
    ]
    assert len(events) > THREAD_READ_RECORDS
    write(store, defs, events)
    keys = list(range(KEYS))
    wanted = [0, 1, 2, 3, 4, 5]
    blobs = await store.read(view, [str(k) for k in keys])
    layout = view_layout(view)
    one_pass = compute(layout, blobs, t0 + 1, wanted)
    monkeypatch.setattr(serving, "THREAD_READ_RECORDS_COMPILED", THREAD_READ_RECORDS)  # compiled or not
    monkeypatch.setattr(serving, "CHUNK_RECORDS", TILES * 3 + 5, raising=False)
    source = StreamSource("default", store, clock=lambda: t0 + 1)
    [got] = await source.read([ViewQuery(view, keys, wanted, 1)])
    assert not isinstance(got, BaseException)
    assert (got.found, got.event_ts_us, got.columns) == (
        one_pass.found,
        one_pass.event_ts_us,
        one_pass.columns,
    )
    assert any(got.found) and not all(got.found)
