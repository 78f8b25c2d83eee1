"""``StreamSource``: stream views as the join reads them (an ``OnlineSource`` adapter).

Registered beside each Redis or memory store as ``stream:<store>`` (``factories.py``);
a stream view's ``serving_store`` names it, so the join fans out to it like to any
store. A read fetches the tiles of every unique key (one round trip per view) and
assembles the windows at the request's clock (``windows.py``). A key is found when it
has an event within the view's longest window; its event timestamp is its newest
event's time, so the view's ttl gives OUTSIDE_MAX_AGE like anywhere else.

Circuit breaker: a reader beside a Redis store is given that store (``health``), whose
background PING probe already tells when the server stops answering (refused or frozen);
while it is DOWN, reads answer UNAVAILABLE at once instead of each request waiting out
its deadline on a frozen server, and the reader's state is the store's.

Writes (push, materialize) are refused: a stream view is fed by its processor only.
Lineage names the view's Kafka topic as its source table.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Mapping, Sequence

import pyarrow as pa

from featurestore.errors import FailedPrecondition, Unavailable
from featurestore.model import STREAM_STORE_PREFIX, FeatureView
from featurestore.rows import key_text
from featurestore.sources.base import OnlineSource, SourceState, ViewQuery, ViewRead
from featurestore.streaming import kernel_load, windows
from featurestore.streaming.store import TileStore
from featurestore.streaming.tiles import TileLayout, max_read_keys, too_many_keys, view_layout
from featurestore.streaming.windows import Windows, compute

# Windows are assembled on the event loop up to this many tile records (the bytes read /
# the record size), in a worker thread above. Measured with windows.compute on the demo
# view (8 slots, 6 aggregations, 1 hour of 10 s tiles): ~300 ns per record once numpy
# takes over (36,000 records in 11 ms, 108,000 in 33 ms), against ~45 us for a round
# trip through asyncio.to_thread; 2,048 records are ~0.6 ms on the loop, to which the
# thread would add 7 %. (A 7-day window of 1-minute tiles, 300 keys: 0.9 s on the loop.)
THREAD_READ_RECORDS = 2_048
# The same with the compiled pass (``kernel.py``): ~12 ns a record in the pass, so
# 12,288 records are ~0.15-0.6 ms with the values made of them (at 1,000 keys of ~19
# records, 15 aggregations: ~47 ns a record, 0.9 ms).
THREAD_READ_RECORDS_COMPILED = 12_288
# And up to this many values made for the response (keys x aggregations asked for), on
# either path: ~30 ns each (a list entry, a float, None where undefined), whatever the
# records: 10,000 keys of one record each, 15 aggregations, took 4.8 ms compiled.
THREAD_READ_VALUES = 20_000
# In the worker thread, windows are assembled in runs of keys of about this many records
# (~20-60 ms each; ~40 array operations a run, ~75 µs, ~2 ms over a 2,000,000-record
# read), and a read cancelled meanwhile (its deadline) stops at the next run instead of
# holding the thread to the end: up to 0.6-2 s at the largest read a request may make.
CHUNK_RECORDS = 65_536


class _Stopped(Exception):
    """The read was cancelled: the rest of its windows are not assembled."""


class StreamSource:
    kind = "stream"

    def __init__(
        self,
        store_name: str,
        tiles: TileStore,
        clock: Callable[[], int] | None = None,
        health: OnlineSource | None = None,
    ) -> None:
        self._name = STREAM_STORE_PREFIX + store_name
        self.tiles = tiles
        self._clock = clock or _now_us  # epoch µs; tests read at chosen times
        self._health = health  # the store on the same server, whose probe opens the circuit
        self._was_down = False

    @property
    def name(self) -> str:
        return self._name

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        await kernel_load.release(self)
        await self.tiles.aclose()

    async def prepare(self, views: Sequence[FeatureView]) -> None:
        for view in views:
            view_layout(view)  # computed off the hot path
        if views:
            kernel_load.start(self)  # the compiled windows pass, in the background

    async def kernel_ready(self, wait_seconds: float = 120.0) -> bool:
        """Wait for the compiled windows pass (benchmarks, tests); whether it serves."""
        return await kernel_load.settled(wait_seconds)

    async def read(self, queries: Sequence[ViewQuery]) -> list[ViewRead | BaseException]:
        if self._health is not None:
            if self._health.state() is SourceState.DOWN:
                self._was_down = True
                return [Unavailable(f"store {self._health.name!r} is down")] * len(queries)
            if self._was_down:  # back: sockets idle through the outage are dead
                self._was_down = False
                self.tiles.reset()
        out: list[ViewRead | BaseException] = []
        for q in queries:
            layout = view_layout(q.view)
            if len(q.keys) > max_read_keys(q.view):  # the join refuses such a request first (plan.py)
                out.append(too_many_keys(q.view, len(q.keys)))
                continue
            try:
                keys = [key_text(k) for k in q.keys]
                blobs = await self.tiles.read(q.view, keys)
            except Exception as e:  # a failed view is returned in its slot
                out.append(e)
                continue
            now_us = self._clock()
            limit = THREAD_READ_RECORDS_COMPILED if windows.kernel_loaded() else THREAD_READ_RECORDS
            if (
                sum(len(b) for b in blobs if b) > limit * layout.record_bytes
                or len(blobs) * len(q.features) > THREAD_READ_VALUES
            ):
                stop = threading.Event()
                try:
                    w = await asyncio.to_thread(_compute_in_runs, layout, blobs, now_us, q.features, stop)
                except asyncio.CancelledError:
                    stop.set()  # the thread goes on only to the end of its current run
                    raise
            else:
                w = compute(layout, blobs, now_us, q.features)
            out.append(ViewRead(w.found, w.event_ts_us, w.columns))
        return out

    async def write(
        self, view: FeatureView, rows: pa.Table, data_version: int, *, create: bool = True
    ) -> int:
        raise FailedPrecondition(
            f"{view.name!r} is a stream view: its processor writes it (featurestore stream run)"
        )

    def table_uri(self, view: FeatureView) -> str:
        assert view.stream is not None
        return view.stream.source.uri

    def state(self) -> SourceState:
        return SourceState.READY if self._health is None else self._health.state()

    def serving(self, versions: Mapping[str, int]) -> None:
        pass

    def missing(self) -> Mapping[str, str]:
        return {}


def _compute_in_runs(
    layout: TileLayout,
    blobs: Sequence[bytes | None],
    now_us: int,
    wanted: Sequence[int],
    stop: threading.Event,
) -> Windows:
    """``compute`` over consecutive runs of keys of about ``CHUNK_RECORDS`` records (a
    key's windows depend on its own tiles only), giving up between two once ``stop`` is set."""
    limit = CHUNK_RECORDS * layout.record_bytes
    parts: list[Windows] = []
    start = size = 0
    for i, blob in enumerate(blobs):
        size += len(blob) if blob else 0
        if size >= limit or i == len(blobs) - 1:
            if stop.is_set():
                raise _Stopped
            parts.append(compute(layout, blobs[start : i + 1], now_us, wanted))
            start, size = i + 1, 0
    if len(parts) == 1:
        return parts[0]
    return Windows(
        [f for p in parts for f in p.found],
        [t for p in parts for t in p.event_ts_us],
        [[v for p in parts for v in p.columns[j]] for j in range(len(wanted))],
    )


def _now_us() -> int:
    return time.time_ns() // 1000
