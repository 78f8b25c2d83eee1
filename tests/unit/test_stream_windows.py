"""Windows at read time: the numpy path (many records), the plain-Python path (a few) and
the compiled pass (``kernel.py``, once loaded) give the answers of the straightforward
recomputation (tests/unit/stream_reference.py)."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest

from featurestore.definitions.parser import parse_definitions
from featurestore.errors import InvalidArgument
from featurestore.model import Aggregation, FeatureView, StreamSource, StreamSpec
from featurestore.sources.base import ViewQuery, ViewRead
from featurestore.streaming import windows
from featurestore.streaming.serving import StreamSource as StreamServing
from featurestore.streaming.store import MemoryTileStore
from featurestore.streaming.tiles import TileAccumulator, layout_of, view_layout
from tests.unit.stream_reference import Accepted, close, window_values

TILE_US = 60_000_000
AGGS = [
    ("n_3", "count", "", 3),
    ("n_amount_10", "count", "amount", 10),
    ("sum_3", "sum", "amount", 3),
    ("avg_10", "avg", "amount", 10),
    ("min_10", "min", "amount", 10),
    ("max_3", "max", "amount", 3),
    ("last_3", "last", "amount", 3),
    ("last_10", "last", "amount", 10),
    ("sum_60", "sum", "amount", 60),
]
SPEC = StreamSpec(
    StreamSource("t", ("u",)), tuple(Aggregation(n, f, c, w * 60) for n, f, c, w in AGGS), tile_seconds=60
)
LAYOUT = layout_of(SPEC)


def events(seed: int, keys: int, per_key: int, now_us: int) -> list[Accepted]:
    rng = random.Random(seed)
    out = []
    for i in range(keys * per_key):
        key = rng.randrange(keys)
        ts = now_us - rng.randrange(-2 * TILE_US, 70 * TILE_US)  # a few in the reader's future
        amount = None if rng.random() < 0.2 else rng.uniform(-50, 200)
        out.append(Accepted(key, ts, amount, 0, i))
    return out


def blobs_of(evs: list[Accepted], keys: int) -> list[bytes | None]:
    acc = TileAccumulator(LAYOUT)
    for e in evs:
        acc.add(str(e.key), e.ts_us, {} if e.amount is None else {"amount": e.amount})
    by_key: dict[str, list[bytes]] = {}
    for key, tiles in acc.records.items():
        by_key[key] = [LAYOUT.pack(rec) for rec in tiles.values()]
    return [b"".join(by_key[str(k)]) if str(k) in by_key else None for k in range(keys)]


@pytest.mark.parametrize(
    ("small", "compiled"), [(0, False), (10**9, False), (0, True)], ids=["numpy", "python", "compiled"]
)
@pytest.mark.parametrize(("keys", "per_key"), [(1, 3), (1, 40), (7, 25), (40, 5)])
def test_every_path_answers_as_the_recomputation(
    monkeypatch: pytest.MonkeyPatch, small: int, compiled: bool, keys: int, per_key: int
) -> None:
    use_path(monkeypatch, small, compiled)
    now_us = 29_000_000 * TILE_US + 17_000_000
    evs = events(keys * 31 + per_key, keys, per_key, now_us)
    wanted = list(range(len(AGGS)))
    got = windows.compute(LAYOUT, blobs_of(evs, keys + 1), now_us, wanted)  # one key more: never seen
    tiles = [(n, f, c, w) for n, f, c, w in AGGS]
    for key in range(keys + 1):
        found, newest, expected = window_values(evs, key, now_us, TILE_US, tiles)
        assert got.found[key] is found, key
        if not found:
            continue
        assert got.event_ts_us[key] == newest
        for j, (name, *_) in enumerate(AGGS):
            assert close(got.columns[j][key], expected[name]), (
                key,
                name,
                got.columns[j][key],
                expected[name],
            )


PATHS = pytest.mark.parametrize(
    ("small", "compiled"), [(0, False), (10**9, False), (0, True)], ids=["numpy", "python", "compiled"]
)


def use_path(monkeypatch: pytest.MonkeyPatch, small: int, compiled: bool) -> None:
    monkeypatch.setattr(windows, "SMALL_READ_RECORDS", small)
    monkeypatch.setattr(windows, "_kernel", None)
    if compiled:
        from featurestore.streaming import kernel  # compiles, or loads numba's cache

        windows.use_kernel(kernel.reduce_windows)


@PATHS
@pytest.mark.parametrize(
    ("ages", "found"),
    [
        ([59], True),  # the longest window's (60 tiles) oldest tile
        ([60], False),  # one tile older: in no window
        ([60, 59], True),
        ([-1], False),  # the reader's future
        ([-1, 0], True),  # and the tile in progress
        ([60, 3, 2, -1], True),  # each window's edges (3, 10 and 60 tiles)
        ([10, 9, 0], True),
    ],
)
def test_every_path_takes_each_windows_edge_tiles_and_no_other(
    monkeypatch: pytest.MonkeyPatch, small: int, compiled: bool, ages: list[int], found: bool
) -> None:
    use_path(monkeypatch, small, compiled)
    now_us = 29_000_000 * TILE_US + 17_000_000
    evs = [Accepted(0, now_us - age * TILE_US, 1.0 + i, 0, i) for i, age in enumerate(ages)]
    got = windows.compute(LAYOUT, blobs_of(evs, 1), now_us, list(range(len(AGGS))))
    exp_found, newest, expected = window_values(evs, 0, now_us, TILE_US, list(AGGS))
    assert got.found[0] is exp_found is found
    if found:
        assert got.event_ts_us[0] == newest
        assert all(close(got.columns[j][0], expected[name]) for j, (name, *_) in enumerate(AGGS)), got.columns


@PATHS
def test_every_path_serves_a_window_value_that_is_not_finite_as_null(
    monkeypatch: pytest.MonkeyPatch, small: int, compiled: bool
) -> None:
    """Tiles written before the decoder bounded column values (decode.MAX_FLOAT) can sum
    to +-inf: null, as HTTP served it, and not inf over gRPC. The key's other values stand."""
    use_path(monkeypatch, small, compiled)
    now_us = 29_000_000 * TILE_US + 17_000_000
    evs = [
        Accepted(k, now_us - age * TILE_US, v, 0, age) for k, v in ((0, 1e308), (1, -1e308)) for age in (0, 1)
    ]
    got = windows.compute(LAYOUT, blobs_of(evs, 2), now_us, list(range(len(AGGS))))
    named = {name: got.columns[j] for j, (name, *_) in enumerate(AGGS)}
    assert got.found == [True, True]
    assert named["sum_3"] == named["avg_10"] == named["sum_60"] == [None, None]
    assert named["n_3"] == [2, 2] and named["max_3"] == named["min_10"] == [1e308, -1e308]


def test_a_subset_of_aggregations_comes_back_in_the_order_asked() -> None:
    now_us = 29_000_000 * TILE_US
    evs = [Accepted(0, now_us - 1, 5.0, 0, 0), Accepted(0, now_us - 2 * TILE_US, 7.0, 0, 1)]
    got = windows.compute(LAYOUT, blobs_of(evs, 1), now_us, [5, 0])
    assert got.columns == [[7.0], [2]]


WEEK_OF_MINUTES: dict[str, Any] = {
    "project": "p",
    "entities": [{"name": "user_id", "dtype": "int64"}],
    "stream_views": [
        {
            "name": "weekly",
            "entities": ["user_id"],
            "tile": "1m",
            "source": {"topic": "t", "key_fields": ["u"], "timestamp_field": "ts"},
            "aggregations": [
                {"name": "n_7d", "function": "count", "window": "7d"},
                {"name": "spend_1d", "function": "sum", "column": "amount", "window": "1d"},
            ],
        }
    ],
}


class EveryKeyAWeekOfTiles(MemoryTileStore):
    """A real memory tile store whose every key holds a tile in each minute of a week
    (one blob, shared: 10,080 records are slow to build tile by tile)."""

    def __init__(self, view: FeatureView, now_us: int) -> None:
        super().__init__()
        layout = view_layout(view)
        tiles = np.arange(now_us // layout.tile_us - 10_079, now_us // layout.tile_us + 1, dtype=np.float64)
        records = np.ones((len(tiles), layout.width))
        records[:, 0], records[:, 1] = tiles, tiles * layout.tile_us
        self.blob = records.astype("<f8").tobytes()

    async def read(self, view: FeatureView, keys: Sequence[str]) -> list[bytes | None]:
        return [self.blob] * len(keys)


async def test_windows_of_many_tiles_are_assembled_off_the_event_loop() -> None:
    """20 keys x a week of 1-minute tiles (~200,000 records: tens of ms of numpy): the
    event loop runs other tasks meanwhile."""
    view = parse_definitions(WEEK_OF_MINUTES, source="w.yaml").views["weekly"]
    now_us = time.time_ns() // 1000
    source = StreamServing("default", EveryKeyAWeekOfTiles(view, now_us), clock=lambda: now_us)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0)
    before = ticks
    [read] = await source.read([ViewQuery(view, list(range(20)), [0, 1], 0)])
    during = ticks - before
    task.cancel()
    assert isinstance(read, ViewRead) and read.columns[0] == [10_080] * 20
    assert during > 0


async def test_a_read_of_more_tiles_than_a_request_may_assemble_is_refused_naming_the_numbers() -> None:
    """The reader's own guard; the join refuses such a request before reading (plan.py)."""
    view = parse_definitions(WEEK_OF_MINUTES, source="w.yaml").views["weekly"]
    now_us = time.time_ns() // 1000
    source = StreamServing("default", EveryKeyAWeekOfTiles(view, now_us), clock=lambda: now_us)
    [refused] = await source.read([ViewQuery(view, list(range(200)), [0], 0)])
    assert isinstance(refused, InvalidArgument)
    assert refused.message == (
        "stream view 'weekly': 200 distinct keys x 10081 tiles each (its longest window) is over the "
        "2,000,000 tile records one request may make it assemble (at most 198 keys); ask for fewer keys "
        "per request"
    )
    [fine] = await source.read([ViewQuery(view, list(range(198)), [0], 0)])
    assert isinstance(fine, ViewRead)


def test_an_event_whose_value_is_no_number_leaves_no_trace_in_the_batch() -> None:
    class Event:
        def __init__(self, amount: Any) -> None:
            self.a = amount

    acc = TileAccumulator(LAYOUT, ["a"])
    acc.add_event("1", 5 * TILE_US, Event(2.0))
    before = {k: {t: list(r) for t, r in tiles.items()} for k, tiles in acc.records.items()}
    for bad in ("2024-01-01T00:00:00Z", b"x", [1.0]):  # (the turn dead-letters such an event)
        for key, tile in (("1", 5), ("1", 6), ("2", 5)):  # its tile, a new tile, a new key
            with pytest.raises(TypeError):
                acc.add_event(key, tile * TILE_US + 1, Event(bad))
    assert {k: {t: list(r) for t, r in tiles.items()} for k, tiles in acc.records.items()} == before
