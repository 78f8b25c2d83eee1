"""The memory store's lookups: a few keys are searched one by one and one row is read
straight from the arrays (cheaper than numpy's vector set-up); they must answer exactly
what the vectorised path answers."""

from __future__ import annotations

import asyncio
import os
import random
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from featurestore.model import BatchSource, DType, Entity, Feature, FeatureView
from featurestore.sources import memory
from featurestore.sources.base import EntityKey, ViewQuery, ViewRead
from featurestore.sources.memory import MemorySource
from tests.contract.test_online_source import ALL_TYPES

U = Entity("user_id", DType.INT64)
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
GUARD = 30  # seconds; only turns a hang into a failure


def index(keys: list[int]) -> memory._KeyIndex:
    entity_keys: list[EntityKey] = list(keys)
    return memory._KeyIndex(entity_keys, np.arange(len(keys), dtype=np.int64))


def reference(keys: list[int], asked: list[Any]) -> list[int]:
    rows = {k: i for i, k in enumerate(keys)}  # the last row of a key wins, as the store's
    return [rows.get(k, -1) if type(k) is int else -1 for k in asked]


EDGES = [0, -1, 1, 10**6, INT64_MIN, INT64_MAX, INT64_MAX + 1, INT64_MIN - 1, 2**70, -5, 7]


@pytest.mark.parametrize("count", [1, 2, memory._SCALAR_KEYS - 1, memory._SCALAR_KEYS, 40])
def test_a_few_keys_and_many_find_the_same_rows_absent_keys_and_edges_included(count: int) -> None:
    rnd = random.Random(count)
    keys = [rnd.randrange(-1000, 1000) for _ in range(500)] + [INT64_MIN, INT64_MAX]  # duplicates too
    idx = index(keys)
    pool = keys + EDGES + [rnd.randrange(-2000, 2000) for _ in range(200)]
    for _ in range(300):
        asked = [rnd.choice(pool) for _ in range(count)]
        assert idx.positions(asked) == reference(keys, asked), asked


def test_a_key_beyond_int64_is_absent_not_compared_as_a_float() -> None:
    # 2**63 as a float64 equals float(INT64_MAX): a float comparison would find it
    idx = index([INT64_MAX, 1])
    assert idx.positions([2**63]) == [-1]
    assert idx.positions([2**63, 1]) == [-1, 1]


async def test_one_row_read_alone_answers_what_the_same_row_answers_in_a_batch(tmp_path: Path) -> None:
    # the online-store contract's every dtype, and a float column with a null (an object column)
    features = (*ALL_TYPES.features, Feature("n", DType.FLOAT64))
    n = 20
    table = pa.table(
        {
            "user_id": pa.array(range(100, 100 + n), pa.int64()),
            "i": pa.array([i * 7 - 50 for i in range(n)], pa.int64()),
            "f": pa.array([i / 3 for i in range(n)], pa.float64()),
            "s": pa.array([f"s{i % 3}" for i in range(n)]),
            "b": pa.array([i % 2 == 0 for i in range(n)]),
            "t": pa.array([1_700_000_000_000_000 + i for i in range(n)], pa.timestamp("us", tz="UTC")),
            "v": pa.array([[float(i), 0.5] for i in range(n)], pa.list_(pa.float32())),
            "n": pa.array([None if i % 4 == 0 else i * 1.5 for i in range(n)], pa.float64()),
            "event_timestamp": pa.array(
                [1_600_000_000_000_000 + i for i in range(n)], pa.timestamp("us", tz="UTC")
            ),
        }
    )
    path = tmp_path / "rows.parquet"
    pq.write_table(table, path)
    view = FeatureView("v", (U,), features, batch_source=BatchSource(path=str(path)))
    source = MemorySource("default")
    await source.prepare([view])
    every = tuple(range(len(features)))
    keys = [100 + i for i in range(n)] + [99, 100 + n]  # two absent keys

    async def read(keys: list[int], features: tuple[int, ...]) -> ViewRead:
        (got,) = await source.read([ViewQuery(view, list(keys), features, 0)])
        assert isinstance(got, ViewRead)
        return got

    batch = await read(keys, every)
    for i, key in enumerate(keys):
        one = await read([key], every)
        assert one.found == [batch.found[i]]
        if not one.found[0]:
            continue  # values of an absent key are the engine's to null (ViewRead)
        assert one.event_ts_us == [batch.event_ts_us[i]]
        for j in every:
            value = one.columns[j][0]
            assert value == batch.columns[j][i] and type(value) is type(batch.columns[j][i]), (key, j)
    one = await read([105], (2, 0))
    assert one.columns == [["s2"], [-15]]  # projection order follows the query


async def test_a_reloaded_file_outdates_the_pushed_rows_older_than_its_own_and_keeps_the_newer(
    tmp_path: Path,
) -> None:
    t = 1_704_067_200_000_000
    path = tmp_path / "u.parquet"

    def write_file(score: int, ts: int) -> None:
        stamps = pa.array([ts] * 3, pa.timestamp("us", tz="UTC"))
        pq.write_table(
            pa.table({"user_id": [1, 2, 3], "score": [score] * 3, "event_timestamp": stamps}), path
        )

    write_file(10, t)
    view = FeatureView("u", (U,), (Feature("score", DType.INT64),), batch_source=BatchSource(path=str(path)))
    source = MemorySource("default")
    await source.prepare([view])
    stamps = pa.array([t + 1, t + 2 * 10**9, t + 1], pa.timestamp("us", tz="UTC"))
    pushed = pa.table({"user_id": [1, 2, 4], "score": [55, 66, 77], "event_timestamp": stamps})
    await source.write(view, pushed, 0, create=False)
    write_file(99, t + 10**9)  # newer than the push of key 1, older than key 2's
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 10**9))  # (a new mtime even on a coarse clock)
    await source.prepare([view])
    (got,) = await source.read([ViewQuery(view, [1, 2, 3, 4], (0,), 0)])
    assert isinstance(got, ViewRead)
    assert got.columns == [[99, 66, 99, 77]]  # key 4 has no row in the file: its push stays


async def test_a_push_that_lands_while_another_view_reloads_is_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    t = 1_704_067_200_000_000

    def write_file(path: Path, score: int) -> None:
        stamps = pa.array([t] * 2, pa.timestamp("us", tz="UTC"))
        pq.write_table(pa.table({"user_id": [1, 2], "score": [score] * 2, "event_timestamp": stamps}), path)
        os.utime(path, ns=(time.time_ns(), time.time_ns() + score * 10**9))  # a new mtime, however coarse

    a, b = tmp_path / "a.parquet", tmp_path / "b.parquet"
    view_a, view_b = (
        FeatureView(name, (U,), (Feature("score", DType.INT64),), batch_source=BatchSource(path=str(path)))
        for name, path in (("a", a), ("b", b))
    )
    write_file(a, 1)
    write_file(b, 1)
    source = MemorySource("default")
    await source.prepare([view_a, view_b])
    write_file(a, 2)
    write_file(b, 2)
    loaded_a, b_may_finish = asyncio.Event(), threading.Event()
    real_load, loop = memory._load, asyncio.get_running_loop()

    def load(view: FeatureView, *args: Any) -> Any:
        if view.name == "a":
            out = real_load(view, *args)
            loop.call_soon_threadsafe(loaded_a.set)
            return out
        b_may_finish.wait(GUARD)  # view b loads until the push has landed
        return real_load(view, *args)

    monkeypatch.setattr(memory, "_load", load)
    reloading = asyncio.ensure_future(source.prepare([view_a, view_b]))
    await asyncio.wait_for(loaded_a.wait(), GUARD)
    stamps = pa.array([t + 10**12], pa.timestamp("us", tz="UTC"))
    await source.write(view_a, pa.table({"user_id": [7], "score": [777], "event_timestamp": stamps}), 0)
    b_may_finish.set()
    await asyncio.wait_for(reloading, GUARD)
    (got,) = await source.read([ViewQuery(view_a, [7], (0,), 0)])
    assert isinstance(got, ViewRead) and got.columns == [[777]]
