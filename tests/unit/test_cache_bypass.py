"""Reads the cache is unlikely to answer in full go past it (featurestore/bypass.py)."""

from __future__ import annotations

from collections.abc import Sequence

import pyarrow as pa
import pytest
from prometheus_client import REGISTRY

from featurestore import metrics
from featurestore.bypass import CacheBypass
from featurestore.cache import CachedSource, LRUCache
from featurestore.config import load_config
from featurestore.errors import InvalidArgument
from featurestore.model import DType, Entity, Feature, FeatureView
from featurestore.rows import view_schema
from featurestore.sources.base import ViewQuery, ViewRead
from featurestore.sources.memory import MemorySource

U = Entity("user_id", DType.INT64)
V = FeatureView("bypass_v", (U,), (Feature("a", DType.INT64),))
W = FeatureView("bypass_w", (U,), (Feature("a", DType.INT64),))


class Counting(MemorySource):
    def __init__(self) -> None:
        super().__init__("remote")
        self.keys_read: list[list[object]] = []
        self.fail: Exception | None = None

    async def read(self, queries: Sequence[ViewQuery]) -> list[ViewRead | BaseException]:
        if self.fail is not None:
            raise self.fail
        self.keys_read += [list(q.keys) for q in queries]
        return await super().read(queries)


async def source(bypass: CacheBypass, rows: int = 300) -> tuple[CachedSource, Counting]:
    inner = Counting()
    src = CachedSource(inner, LRUCache(10_000, 30), bypass)
    await src.prepare([V, W])
    schema = view_schema(V)
    for view in (V, W):
        table = {
            "user_id": list(range(rows)),
            "a": [k * 10 for k in range(rows)],
            "event_timestamp": [1] * rows,
        }
        await src.write(view, pa.table(table, schema=schema), 1)
    inner.keys_read.clear()
    return src, inner


def q(keys: Sequence[int], view: FeatureView = V) -> ViewQuery:
    return ViewQuery(view, list(keys), [0], 1)


def values(read: ViewRead | BaseException) -> list[object]:
    assert isinstance(read, ViewRead)
    return read.columns[0]


def bypassed(view: str) -> float:
    metrics.flush()
    return REGISTRY.get_sample_value("featurestore_cache_bypassed_total", {"view": view}) or 0.0


def test_a_read_consults_while_its_chance_of_a_full_hit_pays_for_its_expected_fills() -> None:
    b = CacheBypass(10, probe_every=1_000)
    b.observe("bypass_v", 99, 100)
    b.observe("bypass_w", 99, 100)
    assert b.hit_rate("bypass_v") == pytest.approx(0.99)
    assert b.consults([q(range(50)), q(range(50), W)])  # 0.99 ** 100 x 10 = 3.7 >= 1.0 miss
    assert not b.consults([q(range(100)), q(range(100), W)])  # 0.99 ** 200 x 10 = 1.3 < 2.0


def test_a_large_read_of_views_whose_every_key_hits_consults_the_cache() -> None:
    b = CacheBypass(10, probe_every=1_000)
    b.observe("bypass_v", 100, 100)
    assert b.consults([q(range(10_000))])


def test_a_read_of_fewer_than_32_keys_always_consults_the_cache() -> None:
    b = CacheBypass(10, probe_every=1_000)
    b.observe("bypass_v", 0, 100)
    assert b.consults([q(range(31))]) and not b.consults([q(range(32))])


def test_a_view_never_read_through_the_cache_is_consulted_until_measured() -> None:
    b = CacheBypass(10)
    assert b.hit_rate("new") == 1.0 and b.consults([q(range(40))])


def test_a_views_hit_rate_follows_its_last_few_thousand_keys() -> None:
    b = CacheBypass(10)
    for _ in range(100):
        b.observe("v", 100, 100)
    assert b.hit_rate("v") == 1.0
    for _ in range(100):  # 10,000 keys, all missed: five windows
        b.observe("v", 0, 100)
    assert b.hit_rate("v") < 0.01


def test_zero_fills_per_round_trip_consults_the_cache_for_every_read() -> None:
    b = CacheBypass(0)
    b.observe("bypass_v", 0, 100)
    assert all(b.consults([q(range(1_000))]) for _ in range(10))


def test_a_negative_fills_per_round_trip_is_refused() -> None:
    with pytest.raises(ValueError, match=r"0 \(always consult\) or positive"):
        CacheBypass(-1)


def test_the_config_refuses_a_negative_fills_per_round_trip() -> None:
    with pytest.raises(InvalidArgument, match=r"cache\.fills_per_round_trip.*0 or a positive integer"):
        load_config(overrides={("cache", "fills_per_round_trip"): -1})


async def test_a_read_unlikely_to_hit_in_full_reads_every_key_from_the_store_and_fills_nothing() -> None:
    src, inner = await source(CacheBypass(10, probe_every=1_000))
    [first] = await src.read([q(range(40))])  # unmeasured: consults, misses all, fills
    assert values(first) == [k * 10 for k in range(40)] and inner.keys_read == [list(range(40))]
    assert src.bypass.hit_rate("bypass_v") == 0.0
    before = bypassed("bypass_v")
    [second] = await src.read([q(range(20, 60))])  # 0.0 ** 40: past the cache
    assert values(second) == [k * 10 for k in range(20, 60)]
    assert inner.keys_read[-1] == list(range(20, 60))  # every key, the cached 20-39 too
    assert bypassed("bypass_v") - before == 40
    [third] = await src.read([q(range(40, 80))])
    assert inner.keys_read[-1] == list(range(40, 80))  # the second read filled nothing
    assert values(third) == [k * 10 for k in range(40, 80)]


async def test_a_large_read_of_keys_that_keep_hitting_is_answered_from_the_cache() -> None:
    src, inner = await source(CacheBypass(10))
    for _ in range(30):  # batch-10 reads: the first pass fills (all missed), the others hit
        for start in range(0, 200, 10):
            await src.read([q(range(start, start + 10))])
    reads = len(inner.keys_read)
    [got] = await src.read([q(range(200))])  # 0.998 ** 200 x 10 = 6.7 >= 0.4 misses
    assert len(inner.keys_read) == reads and values(got) == [k * 10 for k in range(200)]


async def test_one_skipped_read_in_probe_every_consults_so_the_cache_comes_back_when_it_would_hit() -> None:
    src, inner = await source(CacheBypass(10, probe_every=4))
    await src.read([q(range(40))])  # fills 0-39, measures 0% hits
    for _ in range(3):
        await src.read([q(range(40))])
    assert inner.keys_read[-3:] == [list(range(40))] * 3  # skipped: every key from the store
    [probe] = await src.read([q(range(40))])  # the fourth consults: every key cached
    assert values(probe) == [k * 10 for k in range(40)] and len(inner.keys_read) == 4
    for _ in range(200):  # the rate climbs back with each probe until reads consult again
        await src.read([q(range(40))])
    assert src.bypass.hit_rate("bypass_v") > 0.97  # 0.97 ** 40 x 10 = 3.0 >= 1.2 misses
    reads = len(inner.keys_read)
    await src.read([q(range(40))])
    assert len(inner.keys_read) == reads  # answered from the cache, no store read


async def test_a_batch_one_read_of_a_well_hit_view_is_answered_from_the_cache() -> None:
    src, inner = await source(CacheBypass(10))
    await src.read([q([7]), q([7], W)])
    for _ in range(20):
        [a, b] = await src.read([q([7]), q([7], W)])
        assert values(a) == values(b) == [70]
    assert inner.keys_read == [[7], [7]]  # the first read only


async def test_a_failed_store_read_past_the_cache_fails_its_views_with_the_error() -> None:
    src, inner = await source(CacheBypass(10, probe_every=1_000))
    src.bypass.observe("bypass_v", 0, 100)
    src.bypass.observe("bypass_w", 0, 100)
    inner.fail = ConnectionError("redis down")
    got = await src.read([q(range(40)), q(range(40), W)])  # 80 keys: past the cache
    assert len(got) == 2 and all(isinstance(r, ConnectionError) for r in got)
