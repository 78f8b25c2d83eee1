"""The OnlineSource contract. Every adapter runs this same suite (see ``adapters``)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pyarrow as pa
import pytest

from featurestore.model import DType, Entity, Feature, FeatureView
from featurestore.quality.profile import Profile, profile_table
from featurestore.rows import view_schema
from featurestore.sources.base import (
    DataMissing,
    OnlineSource,
    ProfileStore,
    VersionedStore,
    ViewQuery,
    ViewRead,
)
from tests.contract.adapters import ADAPTERS, make_source

USER = Entity("user_id", DType.INT64)
ITEM = Entity("item_id", DType.INT64)
SHOP = Entity("shop", DType.STRING)

ALL_TYPES = FeatureView(
    name="all_types",
    entities=(USER,),
    features=(
        Feature("i", DType.INT64),
        Feature("f", DType.FLOAT64),
        Feature("s", DType.STRING),
        Feature("b", DType.BOOL),
        Feature("t", DType.TIMESTAMP),
        Feature("v", DType.FLOAT32_VECTOR),
    ),
)
PAIR = FeatureView(name="pair", entities=(USER, ITEM), features=(Feature("score", DType.FLOAT64),))
SHOPS = FeatureView(name="shops", entities=(SHOP,), features=(Feature("rating", DType.FLOAT64),))
VIEWS = [ALL_TYPES, PAIR, SHOPS]
TS = 1_704_067_200_000_000


def rows(view: FeatureView, data: dict[str, list[Any]]) -> pa.Table:
    schema = view_schema(view)
    return pa.table({f.name: pa.array(data[f.name], f.type) for f in schema}, schema=schema)


def all_types_rows(ids: list[int], offset: int = 0) -> pa.Table:
    return rows(
        ALL_TYPES,
        {
            "user_id": ids,
            "i": [i * 10 + offset for i in ids],
            "f": [i / 4 + offset for i in ids],
            "s": [f"s-{i}-ü" for i in ids],
            "b": [i % 2 == 0 for i in ids],
            "t": [TS + i for i in ids],
            "v": [[float(i), 0.5] for i in ids],
            "event_timestamp": [TS + offset for _ in ids],
        },
    )


@pytest.fixture(params=ADAPTERS)
async def source(request: pytest.FixtureRequest) -> AsyncIterator[OnlineSource]:
    src = await make_source(request.param, request)
    await src.start()
    await src.prepare(VIEWS)
    yield src
    await src.close()


async def read1(
    src: OnlineSource, view: FeatureView, keys: list[Any], features: list[int], version: int = 1
) -> ViewRead:
    [res] = await src.read([ViewQuery(view, keys, features, version)])
    assert isinstance(res, ViewRead), res
    return res


async def test_write_then_read_every_dtype(source: OnlineSource) -> None:
    assert await source.write(ALL_TYPES, all_types_rows([1, 2, 3]), 1) == 3
    res = await read1(source, ALL_TYPES, [3, 1], [0, 1, 2, 3, 4, 5])
    assert res.found == [True, True]
    assert res.event_ts_us == [TS, TS]
    assert res.columns[0] == [30, 10]
    assert res.columns[1] == [0.75, 0.25]
    assert res.columns[2] == ["s-3-ü", "s-1-ü"]
    assert res.columns[3] == [False, False]
    assert res.columns[4] == [TS + 3, TS + 1]
    assert [list(v) for v in res.columns[5]] == [[3.0, 0.5], [1.0, 0.5]]


async def test_projection_order_follows_the_query(source: OnlineSource) -> None:
    await source.write(ALL_TYPES, all_types_rows([7]), 1)
    res = await read1(source, ALL_TYPES, [7], [2, 0])
    assert res.columns == [["s-7-ü"], [70]]


async def test_unknown_keys_are_not_found(source: OnlineSource) -> None:
    await source.write(ALL_TYPES, all_types_rows([1]), 1)
    res = await read1(source, ALL_TYPES, [1, 404, -5], [0])
    assert res.found == [True, False, False]
    assert res.columns[0][0] == 10


async def test_empty_key_list(source: OnlineSource) -> None:
    res = await read1(source, ALL_TYPES, [], [0, 1])
    assert res.found == [] and res.columns == [[], []]


async def test_null_feature_values_round_trip(source: OnlineSource) -> None:
    table = rows(
        ALL_TYPES,
        {
            "user_id": [5],
            "i": [None],
            "f": [None],
            "s": [None],
            "b": [None],
            "t": [None],
            "v": [None],
            "event_timestamp": [TS],
        },
    )
    await source.write(ALL_TYPES, table, 1)
    res = await read1(source, ALL_TYPES, [5], [0, 1, 2, 3, 4, 5])
    assert res.found == [True]
    assert [c[0] for c in res.columns] == [None] * 6


async def test_last_write_wins(source: OnlineSource) -> None:
    await source.write(ALL_TYPES, all_types_rows([1, 2]), 1)
    await source.write(ALL_TYPES, all_types_rows([2], offset=5), 1)
    res = await read1(source, ALL_TYPES, [1, 2], [0])
    assert res.columns[0] == [10, 25]
    assert res.event_ts_us == [TS, TS + 5]


async def test_data_versions_are_isolated(source: OnlineSource) -> None:
    await source.write(ALL_TYPES, all_types_rows([1, 2]), 1)
    await source.write(ALL_TYPES, all_types_rows([2, 3], offset=1), 2)
    v1 = await read1(source, ALL_TYPES, [1, 2, 3], [0], version=1)
    v2 = await read1(source, ALL_TYPES, [1, 2, 3], [0], version=2)
    assert v1.found == [True, True, False] and v1.columns[0][:2] == [10, 20]
    assert v2.found == [False, True, True] and v2.columns[0][1:] == [21, 31]


async def test_composite_keys(source: OnlineSource) -> None:
    table = rows(
        PAIR,
        {
            "user_id": [1, 1, 2],
            "item_id": [1, 2, 1],
            "score": [0.11, 0.12, 0.21],
            "event_timestamp": [TS] * 3,
        },
    )
    await source.write(PAIR, table, 1)
    res = await read1(source, PAIR, [(1, 2), (2, 1), (2, 2)], [0])
    assert res.found == [True, True, False]
    assert res.columns[0][:2] == [0.12, 0.21]


async def test_string_keys_with_hostile_characters(source: OnlineSource) -> None:
    keys = [
        "plain",
        "quote'\"",
        "back\\slash",
        "pipe|sep",
        "'; DROP TABLE shops;--",
        "spaces and\nnewline",
        "ünïcödé",
        "",
    ]
    table = rows(
        SHOPS,
        {"shop": keys, "rating": [float(i) for i in range(len(keys))], "event_timestamp": [TS] * len(keys)},
    )
    await source.write(SHOPS, table, 1)
    res = await read1(source, SHOPS, [*reversed(keys), "missing"], [0])
    assert res.found == [True] * len(keys) + [False]
    assert res.columns[0][: len(keys)] == [float(i) for i in reversed(range(len(keys)))]


async def test_several_views_in_one_read(source: OnlineSource) -> None:
    await source.write(ALL_TYPES, all_types_rows([1]), 1)
    await source.write(SHOPS, rows(SHOPS, {"shop": ["a"], "rating": [4.5], "event_timestamp": [TS]}), 1)
    out = await source.read([ViewQuery(SHOPS, ["a", "b"], [0], 1), ViewQuery(ALL_TYPES, [1], [1], 1)])
    assert isinstance(out[0], ViewRead) and out[0].columns == [[4.5, out[0].columns[0][1]]]
    assert out[0].found == [True, False]
    assert isinstance(out[1], ViewRead) and out[1].columns == [[0.25]]


async def test_queries_sharing_one_list_of_keys_read_each_their_own_rows(source: OnlineSource) -> None:
    """As a join reads the views it keys alike: one list object for all of them."""
    await source.write(ALL_TYPES, all_types_rows([1, 2]), 1)
    await source.write(ALL_TYPES, all_types_rows([2, 3], offset=1), 2)
    shops = ["ünï", "a b"]
    await source.write(
        SHOPS, rows(SHOPS, {"shop": shops, "rating": [1.0, 2.0], "event_timestamp": [TS] * 2}), 1
    )
    await source.write(
        SHOPS, rows(SHOPS, {"shop": shops, "rating": [3.0, 4.0], "event_timestamp": [TS] * 2}), 2
    )
    ids: list[Any] = [3, 2, 1]
    names: list[Any] = [*shops, "none"]
    queries: list[tuple[FeatureView, list[Any], int]] = [
        (ALL_TYPES, ids, 1),
        (SHOPS, names, 2),
        (ALL_TYPES, ids, 2),
        (SHOPS, names, 1),
    ]
    out = await source.read([ViewQuery(view, keys, [0], version) for view, keys, version in queries])
    assert all(isinstance(r, ViewRead) for r in out), out
    v1, s2, v2, s1 = (r for r in out if isinstance(r, ViewRead))
    assert (v1.found, v1.columns[0][1:]) == ([False, True, True], [20, 10])
    assert (v2.found, v2.columns[0][:2]) == ([True, True, False], [31, 21])
    assert (s1.found, s1.columns[0][:2]) == ([True, True, False], [1.0, 2.0])
    assert (s2.found, s2.columns[0][:2]) == ([True, True, False], [3.0, 4.0])


async def test_large_batch(source: OnlineSource) -> None:
    ids = list(range(1, 2001))
    await source.write(ALL_TYPES, all_types_rows(ids), 1)
    res = await read1(source, ALL_TYPES, ids[::-1], [0])
    assert all(res.found) and res.columns[0] == [i * 10 for i in ids[::-1]]


async def test_a_changed_definition_never_reads_rows_written_for_the_old_one(source: OnlineSource) -> None:
    # Same name and width, one feature renamed: the stored rows must not be read as it.
    renamed = FeatureView("all_types", (USER,), (Feature("i_renamed", DType.INT64), *ALL_TYPES.features[1:]))
    assert renamed.layout != ALL_TYPES.layout
    await source.prepare([*VIEWS, renamed])  # the old layout still serves, the new is next
    await source.write(ALL_TYPES, all_types_rows([1]), 1)
    [old, new] = await source.read([ViewQuery(ALL_TYPES, [1], [0], 1), ViewQuery(renamed, [1], [0], 1)])
    assert isinstance(old, ViewRead) and old.columns == [[10]]
    assert isinstance(new, BaseException) or new.found == [False], new


async def test_a_feature_whose_dtype_changed_never_reads_rows_written_with_the_old_one(
    source: OnlineSource,
) -> None:
    # Same names, one feature's dtype changed (int64 -> string): the stored ints must not
    # be served as the new definition's strings (ClickHouse once read them as such).
    retyped = FeatureView("all_types", (USER,), (Feature("i", DType.STRING), *ALL_TYPES.features[1:]))
    assert retyped.layout != ALL_TYPES.layout
    await source.prepare([*VIEWS, retyped])
    await source.write(ALL_TYPES, all_types_rows([1]), 1)
    [old, new] = await source.read([ViewQuery(ALL_TYPES, [1], [0], 1), ViewQuery(retyped, [1], [0], 1)])
    assert isinstance(old, ViewRead) and old.columns == [[10]]
    assert isinstance(new, BaseException) or new.found == [False], new


async def test_a_never_written_view_whose_dtype_changed_answers_not_found_at_version_0(
    source: OnlineSource,
) -> None:
    # Version 0 (pushes before any materialization) is created empty for the first layout;
    # a definition changed before anything was written still reads it: nothing there.
    retyped = FeatureView("all_types", (USER,), (Feature("i", DType.STRING), *ALL_TYPES.features[1:]))
    await source.prepare([*VIEWS])
    await source.prepare([*VIEWS, retyped])
    [res] = await source.read([ViewQuery(retyped, [1], [0], 0)])
    assert isinstance(res, ViewRead) and res.found == [False], res


async def test_identity(source: OnlineSource) -> None:
    assert source.kind in ("memory", "redis", "clickhouse")
    assert source.table_uri(ALL_TYPES)
    assert source.state().value in ("ready", "degraded")


async def test_a_store_reports_a_served_view_as_missing_exactly_when_a_read_finds_its_data_gone(
    source: OnlineSource,
) -> None:
    await source.write(ALL_TYPES, all_types_rows([1, 2]), 1)
    source.serving({"all_types": 1, "pair": 9, "shops": 0})  # pair's version 9 was never written
    [held] = await source.read([ViewQuery(ALL_TYPES, [1], [0], 1)])
    [gone] = await source.read([ViewQuery(PAIR, [(1, 2)], [0], 9)])
    assert isinstance(held, ViewRead) and held.found == [True]
    if source.kind == "memory":  # holds what it loaded, cannot lose it: answers every version
        assert isinstance(gone, ViewRead) and gone.found == [False] and not source.missing()
    else:  # data versions live in the store, and can vanish from it
        assert isinstance(gone, DataMissing), gone
        assert set(source.missing()) == {"pair"} and source.missing()["pair"]
    source.serving({"all_types": 1, "pair": 0, "shops": 0})  # the view moved on: forgotten
    assert not source.missing()


# -- reference profiles (featurestore/quality/profile.py), kept with each data version ----


async def test_a_profile_is_kept_per_data_version(source: OnlineSource) -> None:
    assert isinstance(source, ProfileStore)
    await source.write(ALL_TYPES, all_types_rows([1, 2]), 1)
    await source.write(ALL_TYPES, all_types_rows([2, 3], offset=1), 2)
    one = profile_table(ALL_TYPES, 1, all_types_rows([1, 2]), seed=0).to_bytes()
    two = profile_table(ALL_TYPES, 2, all_types_rows([2, 3], offset=1), seed=0).to_bytes()
    await source.write_profile(ALL_TYPES, 1, one)
    await source.write_profile(ALL_TYPES, 2, two)
    assert await source.read_profile(ALL_TYPES, 1) == one
    assert await source.read_profile(ALL_TYPES, 2) == two
    assert await source.read_profile(ALL_TYPES, 7) is None  # (no batch file either)
    back = Profile.from_bytes(await source.read_profile(ALL_TYPES, 2) or b"")
    sample = back.features["i"].sample
    assert back.data_version == 2 and sample is not None and sample.tolist() == [21.0, 31.0]


async def test_a_dropped_data_version_takes_its_profile_with_it(source: OnlineSource) -> None:
    if not isinstance(source, VersionedStore):
        pytest.skip("the store keeps no data versions of its own (memory: the loaded file)")
    assert isinstance(source, ProfileStore)
    await source.write(ALL_TYPES, all_types_rows([1]), 3)
    await source.write_profile(ALL_TYPES, 3, profile_table(ALL_TYPES, 3, all_types_rows([1])).to_bytes())
    await source.drop_version(ALL_TYPES, 3)
    assert await source.read_profile(ALL_TYPES, 3) is None
