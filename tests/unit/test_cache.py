"""LRU cache with TTL, and the CachedSource in front of a store."""

from __future__ import annotations

from collections.abc import Sequence

import pyarrow as pa

from featurestore.cache import NOT_FOUND, CachedSource, LRUCache
from featurestore.model import DType, Entity, Feature, FeatureView
from featurestore.sources.arrow import view_schema
from featurestore.sources.base import ViewQuery, ViewRead
from featurestore.sources.memory import MemorySource

U = Entity("user_id", DType.INT64)
V = FeatureView("v", (U,), (Feature("a", DType.INT64), Feature("b", DType.STRING)))


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_lru_bound_and_recency() -> None:
    c = LRUCache(2, 30)
    c.put("a", (1,))
    c.put("b", (2,))
    assert c.get("a") == (1,)  # a is now most recent
    c.put("c", (3,))
    assert c.get("b") is None and c.get("a") == (1,) and c.get("c") == (3,)
    assert len(c) == 2


def test_ttl_expiry() -> None:
    clock = Clock()
    c = LRUCache(10, 30, clock=clock)
    c.put("a", NOT_FOUND)
    clock.t = 29.9
    assert c.get("a") == NOT_FOUND
    clock.t = 30.1
    assert c.get("a") is None


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
