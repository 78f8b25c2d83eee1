"""The row cache (approximate LRU with a TTL), and the CachedSource in front of a store."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import prometheus_client
import pyarrow as pa

from featurestore import metrics
from featurestore.cache import NOT_FOUND, CachedSource, LRUCache
from featurestore.model import DType, Entity, Feature, FeatureView
from featurestore.rows import view_schema
from featurestore.sources.base import ViewQuery, ViewRead
from featurestore.sources.memory import MemorySource

U = Entity("user_id", DType.INT64)
V = FeatureView("v", (U,), (Feature("a", DType.INT64), Feature("b", DType.STRING)))


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_a_full_cache_evicts_the_entry_read_least_recently() -> None:
    c = LRUCache(2, 30)
    c.put("s", "a", (1,))
    c.put("s", "b", (2,))
    assert c.get("s", "a") == (1,)  # a was read: the hand passes it by
    c.put("s", "c", (3,))
    assert c.get("s", "b") is None and c.get("s", "a") == (1,) and c.get("s", "c") == (3,)
    assert len(c) == 2


def test_the_hand_gives_each_read_entry_one_second_chance_only() -> None:
    c = LRUCache(3, 30)
    for k in "abc":
        c.put("s", k, (k,))
    assert [c.get("s", k) for k in "abc"] == [("a",), ("b",), ("c",)]  # all read
    c.put("s", "d", ("d",))  # one full turn clears every mark, then the oldest goes
    assert c.get("s", "a") is None and len(c) == 3


def test_spaces_are_separate_and_share_the_bound() -> None:
    c = LRUCache(2, 30)
    c.put("v1", 7, (1,))
    c.put("v2", 7, (2,))
    assert c.get("v1", 7) == (1,) and c.get("v2", 7) == (2,) and c.get("v3", 7) is None
    c.put("v3", 7, (3,))
    assert len(c) == 2
    c.invalidate("v3", 7)
    c.invalidate("v3", 8)  # absent: nothing happens
    assert c.get("v3", 7) is None and len(c) == 1


def test_an_entry_expires_after_its_ttl_and_not_found_is_cached_too() -> None:
    clock = Clock()
    c = LRUCache(10, 30, clock=clock)
    c.put("s", "a", NOT_FOUND)
    clock.t = 29.9
    assert c.get("s", "a") == NOT_FOUND
    clock.t = 30.1
    assert c.get("s", "a") is None


class Counting(MemorySource):
    def __init__(self) -> None:
        super().__init__("remote")
        self.keys_read: list[list[object]] = []

    async def read(self, queries: Sequence[ViewQuery]) -> list[ViewRead | BaseException]:
        self.keys_read += [list(q.keys) for q in queries]
        return await super().read(queries)


async def test_cached_source_reads_only_misses_and_caches_not_found() -> None:
    inner = Counting()
    src = CachedSource(inner, LRUCache(100, 30))
    await src.prepare([V])
    schema = view_schema(V)
    await src.write(
        V,
        pa.table(
            {
                "user_id": [1, 2],
                "a": [10, 20],
                "b": ["x", "y"],
                "event_timestamp": pa.array([5, 6], schema.field("event_timestamp").type),
            },
            schema=schema,
        ),
        1,
    )
    [r1] = await src.read([ViewQuery(V, [1, 3], [1], 1)])
    assert isinstance(r1, ViewRead) and r1.found == [True, False] and r1.columns == [["x", None]]
    [r2] = await src.read([ViewQuery(V, [3, 2, 1], [0, 1], 1)])
    assert isinstance(r2, ViewRead)
    assert r2.found == [False, True, True] and r2.columns[0][1:] == [20, 10] and r2.event_ts_us[1:] == [6, 5]
    assert inner.keys_read == [[1, 3], [2]]  # 3 (not found) and 1 came from the cache
    # another data version is a different cache entry
    [r3] = await src.read([ViewQuery(V, [1], [0], 2)])
    assert isinstance(r3, ViewRead) and r3.found == [False]
    assert inner.keys_read[-1] == [1]


async def test_write_through_invalidates() -> None:
    inner = Counting()
    src = CachedSource(inner, LRUCache(100, 30))
    await src.prepare([V])
    schema = view_schema(V)
    ts = schema.field("event_timestamp").type
    [r] = await src.read([ViewQuery(V, [1], [0], 1)])
    assert isinstance(r, ViewRead) and r.found == [False]
    await src.write(
        V,
        pa.table(
            {"user_id": [1], "a": [11], "b": ["z"], "event_timestamp": pa.array([7], ts)}, schema=schema
        ),
        1,
    )
    [r] = await src.read([ViewQuery(V, [1], [0], 1)])
    assert isinstance(r, ViewRead) and r.found == [True] and r.columns == [[11]]


async def test_each_cached_store_reports_its_own_entries_and_a_write_updates_them() -> None:
    a, b = (
        CachedSource(MemorySource("cache_gauge_a"), LRUCache(100, 30)),
        CachedSource(MemorySource("cache_gauge_b"), LRUCache(100, 30)),
    )
    for src in (a, b):
        await src.prepare([V])
    await a.read([ViewQuery(V, [1, 2, 3], [0], 1)])  # three not-found rows cached
    await b.read([ViewQuery(V, [1], [0], 1)])

    def entries(store: str) -> float | None:
        metrics.flush()  # (the gauge is buffered, as every hot-path metric)
        return prometheus_client.REGISTRY.get_sample_value("featurestore_cache_entries", {"store": store})

    assert (entries("cache_gauge_a"), entries("cache_gauge_b")) == (3, 1)
    schema = view_schema(V)
    rows = {
        "user_id": [1, 2],
        "a": [1, 2],
        "b": ["x", "y"],
        "event_timestamp": pa.array([5, 6], schema.field("event_timestamp").type),
    }
    await a.write(V, pa.table(rows, schema=schema), 1)  # invalidates two of a's rows
    assert (entries("cache_gauge_a"), entries("cache_gauge_b")) == (1, 1)


async def test_a_changed_definition_is_never_answered_from_rows_cached_for_the_old_one() -> None:
    inner = Counting()
    src = CachedSource(inner, LRUCache(100, 30))
    renamed = FeatureView("v", (U,), (Feature("a_renamed", DType.INT64), Feature("b", DType.STRING)))
    await src.prepare([V, renamed])
    schema = view_schema(V)
    ts = schema.field("event_timestamp").type
    await src.write(
        V,
        pa.table(
            {"user_id": [1], "a": [11], "b": ["z"], "event_timestamp": pa.array([7], ts)}, schema=schema
        ),
        1,
    )
    [old] = await src.read([ViewQuery(V, [1], [0], 1)])
    assert isinstance(old, ViewRead) and old.columns == [[11]]  # now cached
    [new] = await src.read([ViewQuery(renamed, [1], [0], 1)])
    assert inner.keys_read[-1] == [1]  # went to the store, not to the cached row
    assert isinstance(new, ViewRead) and new.found == [False]  # nothing written for the new layout


async def test_a_read_overlapping_a_write_does_not_put_stale_rows_back() -> None:
    gate = asyncio.Event()
    has_read = asyncio.Event()

    class Slow(Counting):
        async def read(self, queries: Sequence[ViewQuery]) -> list[ViewRead | BaseException]:
            out = await super().read(queries)  # the value before the write
            has_read.set()
            await gate.wait()
            return out

    inner = Slow()
    src = CachedSource(inner, LRUCache(100, 30))
    await src.prepare([V])
    schema = view_schema(V)
    ts = schema.field("event_timestamp").type
    row = pa.table(
        {"user_id": [1], "a": [11], "b": ["z"], "event_timestamp": pa.array([7], ts)}, schema=schema
    )
    reading = asyncio.create_task(src.read([ViewQuery(V, [1], [0], 1)]))
    await asyncio.wait_for(has_read.wait(), 5)
    await src.write(V, row, 1)  # lands while the read is in flight
    gate.set()
    [stale] = await reading
    assert isinstance(stale, ViewRead) and stale.found == [False]  # that read may answer what it saw
    [fresh] = await src.read([ViewQuery(V, [1], [0], 1)])
    assert isinstance(fresh, ViewRead) and fresh.columns == [[11]]  # but it did not fill the cache


async def test_a_cached_row_expires_a_ttl_after_the_store_was_asked_not_after_it_answered() -> None:
    clock = Clock()
    gate = asyncio.Event()

    class SlowStore(Counting):
        async def read(self, queries: Sequence[ViewQuery]) -> list[ViewRead | BaseException]:
            await gate.wait()
            return await super().read(queries)

    src = CachedSource(SlowStore(), LRUCache(100, 30, clock=clock))
    await src.prepare([V])
    reading = asyncio.create_task(src.read([ViewQuery(V, [1], [0], 1)]))
    await asyncio.sleep(0)
    clock.t = 10.0  # the store answers 10 s after it was asked
    gate.set()
    await reading
    clock.t = 29.0
    assert src.cache.get((V.name, V.layout, 1), 1) is not None
    clock.t = 30.5  # 30 s after the ask (not 40 s after the answer)
    assert src.cache.get((V.name, V.layout, 1), 1) is None


class Owing(MemorySource):
    """A store that owes (marks unavailable) the keys in ``owed`` and serves the rest."""

    owed: frozenset[object] = frozenset()

    async def read(self, queries: Sequence[ViewQuery]) -> list[ViewRead | BaseException]:
        got = await super().read(queries)
        out: list[ViewRead | BaseException] = []
        for q, r in zip(queries, got, strict=True):
            assert isinstance(r, ViewRead)
            flags = [k in self.owed for k in q.keys]
            out.append(r._replace(unavailable=flags) if any(flags) else r)
        return out


async def owing_source() -> tuple[CachedSource, Owing]:
    from featurestore.bypass import CacheBypass

    inner = Owing("remote")
    src = CachedSource(inner, LRUCache(100, 30), CacheBypass(0))
    await src.prepare([V])
    table = {"user_id": [1, 2, 3], "a": [10, 20, 30], "b": ["x", "y", "z"], "event_timestamp": [1, 1, 1]}
    await src.write(V, pa.table(table, schema=view_schema(V)), 1)
    return src, inner


async def test_keys_the_store_owes_are_served_unavailable_and_never_cached_whether_or_not_others_hit() -> (
    None
):
    src, inner = await owing_source()
    await src.read([ViewQuery(V, [1], [0, 1], 1)])  # user 1 cached
    inner.owed = frozenset({2})
    for keys in ([2], [1, 2, 3]):  # nothing cached of it / some keys cached
        [got] = await src.read([ViewQuery(V, keys, [0, 1], 1)])
        assert isinstance(got, ViewRead) and got.unavailable is not None
        assert [u for k, u in zip(keys, got.unavailable, strict=True)] == [k == 2 for k in keys]
        assert [f for k, f in zip(keys, got.found, strict=True) if k != 2] == [True] * (len(keys) - 1)
    inner.owed = frozenset()
    [got] = await src.read([ViewQuery(V, [2], [0, 1], 1)])  # 2 was never cached as a row or NOT_FOUND
    assert isinstance(got, ViewRead) and got.found == [True] and got.columns == [[20], ["y"]]


async def test_a_fully_cached_read_and_a_fully_missed_read_give_the_same_columns() -> None:
    src, _ = await owing_source()
    [missed] = await src.read([ViewQuery(V, [3, 1, 9], [1, 0], 1)])
    [cached] = await src.read([ViewQuery(V, [3, 1, 9], [1, 0], 1)])
    for got in (missed, cached):
        assert isinstance(got, ViewRead)
        assert (
            got.found == [True, True, False]
            and got.columns[0][:2] == ["z", "x"]
            and got.columns[1][:2] == [30, 10]
        )
        assert got.event_ts_us[:2] == [1, 1] and not got.unavailable


async def test_a_trials_read_of_a_store_that_owes_keys_answers_the_features_asked_and_caches_nothing() -> (
    None
):
    from featurestore.bypass import TRIAL, CacheBypass

    clock = Clock()
    inner = Owing("remote")
    src = CachedSource(inner, LRUCache(1_000, 30, clock=clock), CacheBypass(0.5, clock=clock, unmeasured=0.0))
    await src.prepare([V])
    table = {"user_id": [1, 2, 3], "a": [10, 20, 30], "b": ["x", "y", "z"], "event_timestamp": [1, 1, 1]}
    await src.write(V, pa.table(table, schema=view_schema(V)), 1)
    keys = [1, 2, 3, *range(100, 400)]  # the rest not found: some of them sampled, missed
    await src.read([ViewQuery(V, keys, [1], 1)])  # skipping since 0
    clock.t = 30.0
    inner.owed = frozenset({2})
    assert src.bypass.consults([ViewQuery(V, keys, [1], 1)]) == TRIAL
    [got] = await src.read([ViewQuery(V, keys, [1], 1)])
    assert isinstance(got, ViewRead) and len(got.columns) == 1 and got.columns[0][:3:2] == ["x", "z"]
    assert got.unavailable is not None and got.unavailable[:3] == [False, True, False]
    assert len(src.cache) == 0


def test_a_cache_on_its_own_counts_its_evictions_under_an_empty_store_name_from_its_first() -> None:
    """A CachedSource names its cache's series at once; a cache used alone makes its
    store="" series only when it first evicts, so serving processes export none."""

    def evicted() -> float | None:
        metrics.flush()
        return prometheus_client.REGISTRY.get_sample_value(
            "featurestore_cache_evictions_total", {"store": ""}
        )

    cache = LRUCache(2, 30)
    before = evicted()
    cache.put_many("s", [1, 2], [(1,), (2,)])
    assert evicted() == before  # nothing evicted: no series made or moved
    cache.put_many("s", [3], [(3,)])
    assert evicted() == (before or 0.0) + 1
