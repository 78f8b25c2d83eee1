"""The ClickHouse store on the real engine (chdb in this process): SQL safety, a join
across ClickHouse and other stores, a saturated or failing ClickHouse, and
materialization from a ClickHouse table into Redis."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import clickhouse_connect
import pyarrow as pa
import pytest

from featurestore.join import JoinEngine, JoinRequest, Limits
from featurestore.materialize import Materializer
from featurestore.model import DType, Entity, Feature, FeatureView, Status
from featurestore.offline import ClickHouseTableSource
from featurestore.plan import ServingState
from featurestore.registry.definitions import make_definitions
from featurestore.registry.file import FileRegistry
from featurestore.registry.snapshot import new_snapshot
from featurestore.sources.arrow import view_schema
from featurestore.sources.base import ViewQuery, ViewRead
from featurestore.sources.clickhouse import ClickHouseOptions, ClickHouseSource, _select_sql, online_table_ddl
from featurestore.sources.memory import MemorySource
from featurestore.sources.redis import RedisOptions, RedisSource
from tests.servers import RedisServer

U = Entity("user_id", DType.INT64)
M = Entity("merchant", DType.STRING)
TX = FeatureView(
    "tx", (U,), (Feature("txn_90d", DType.INT64), Feature("avg_basket", DType.FLOAT64)), online_store="ch"
)
PROFILE = FeatureView("profile", (U,), (Feature("age", DType.INT64),), online_store="mem")
SHOP = FeatureView("shop", (M,), (Feature("risk", DType.FLOAT64),), online_store="ch")
TS = 1_704_067_200_000_000


def rows(view: FeatureView, data: dict[str, list[Any]]) -> pa.Table:
    schema = view_schema(view)
    return pa.table({f.name: pa.array(data[f.name], f.type) for f in schema}, schema=schema)


@pytest.fixture
async def ch(chdb_dsn: str) -> AsyncIterator[ClickHouseSource]:
    src = ClickHouseSource(
        "ch", f"t{uuid.uuid4().hex[:8]}", ClickHouseOptions(dsn=chdb_dsn, threads=2, max_queued=2)
    )
    await src.start()
    await src.prepare([TX, SHOP])
    yield src
    await src.close()


def test_sql_is_built_from_identifiers_only() -> None:
    sql = _select_sql("featurestore", "p__shop__v1", SHOP, [0])
    assert sql.endswith("WHERE `__key` IN {keys:Array(String)}")
    ddl = online_table_ddl("featurestore", "p", TX, 3)
    assert "ENGINE = EmbeddedRocksDB PRIMARY KEY `__key`" in ddl and "`p__tx__v3`" in ddl


async def test_hostile_keys_are_parameters_not_sql(ch: ClickHouseSource) -> None:
    hostile = [
        "a'b",
        "c\\d",
        "e\\'f",
        "'); DROP TABLE featurestore.__expiry; --",
        "x' OR '1'='1",
        "{keys:String}",
        "`q`",
    ]
    await ch.write(
        SHOP,
        rows(
            SHOP,
            {
                "merchant": hostile,
                "risk": [float(i) for i in range(len(hostile))],
                "event_timestamp": [TS] * len(hostile),
            },
        ),
        1,
    )
    [res] = await ch.read([ViewQuery(SHOP, [*hostile, "x"], [0], 1)])
    assert isinstance(res, ViewRead)
    assert res.found == [True] * len(hostile) + [False]  # "x' OR '1'='1" matched only itself
    assert res.columns[0][: len(hostile)] == [float(i) for i in range(len(hostile))]
    assert await ch.run(lambda c: c.command("EXISTS TABLE featurestore.__expiry")) == 1


async def test_join_across_clickhouse_and_memory(ch: ClickHouseSource) -> None:
    mem = MemorySource("mem")
    await mem.prepare([PROFILE])
    await mem.write(
        PROFILE, rows(PROFILE, {"user_id": [1, 2], "age": [30, 40], "event_timestamp": [TS, TS]}), 0
    )
    await ch.write(
        TX,
        rows(
            TX, {"user_id": [1, 3], "txn_90d": [5, 7], "avg_basket": [10.5, 3.0], "event_timestamp": [TS, TS]}
        ),
        0,
    )
    defs = make_definitions("p", [U, M], [TX, PROFILE, SHOP], [])
    engine = JoinEngine({"ch": ch, "mem": mem}, ServingState(new_snapshot(defs, 1)), Limits())
    res = await engine.join(
        JoinRequest({"user_id": [1, 2, 3, 1]}, ("profile:age", "tx:txn_90d", "tx:avg_basket")),
        time.monotonic() + 2,
    )
    cols = {c.name: c for c in res.columns}
    assert cols["age"].values == [30, 40, None, 30]
    assert cols["txn_90d"].values == [5, None, 7, 5]
    outcome = cols["avg_basket"].outcome
    assert outcome is not None
    assert outcome.statuses == [Status.PRESENT, Status.NOT_FOUND, Status.PRESENT, Status.PRESENT]
    assert not res.partial


async def test_saturated_clickhouse_cannot_starve_other_views(ch: ClickHouseSource) -> None:
    mem = MemorySource("mem")
    await mem.prepare([PROFILE])
    await mem.write(PROFILE, rows(PROFILE, {"user_id": [1], "age": [30], "event_timestamp": [TS]}), 0)
    defs = make_definitions("p", [U, M], [TX, PROFILE, SHOP], [])
    engine = JoinEngine({"ch": ch, "mem": mem}, ServingState(new_snapshot(defs, 1)), Limits())
    # A heavy analytical query per thread occupies the whole pool, plus the queue.
    heavy = [
        asyncio.ensure_future(ch.run(lambda c: c.query("SELECT sleepEachRow(0.5) FROM numbers(4)")))
        for _ in range(4)
    ]
    await asyncio.sleep(0.2)
    req = JoinRequest({"user_id": [1]}, ("profile:age", "tx:txn_90d"))
    t0 = time.monotonic()
    res = await engine.join(req, time.monotonic() + 0.3)
    elapsed = time.monotonic() - t0
    cols = {c.name: c for c in res.columns}
    assert cols["age"].values == [30]  # the memory view answers
    assert cols["txn_90d"].outcome.statuses == [Status.UNAVAILABLE]  # type: ignore[union-attr]
    assert res.partial and elapsed < 0.6  # failed fast (pool full), never past the deadline
    await asyncio.gather(*heavy)
    res = await engine.join(req, time.monotonic() + 2)
    assert {c.name: c for c in res.columns}["txn_90d"].outcome.statuses == [Status.NOT_FOUND]  # type: ignore[union-attr]


async def test_slow_clickhouse_answers_unavailable_within_the_deadline(ch: ClickHouseSource) -> None:
    defs = make_definitions("p", [U, M], [TX, PROFILE, SHOP], [])
    engine = JoinEngine({"ch": ch, "mem": MemorySource("mem")}, ServingState(new_snapshot(defs, 1)), Limits())
    busy = [
        asyncio.ensure_future(ch.run(lambda c: c.query("SELECT sleepEachRow(0.5) FROM numbers(2)")))
        for _ in range(2)
    ]
    await asyncio.sleep(0.1)
    t0 = time.monotonic()
    res = await engine.join(JoinRequest({"user_id": [1]}, ("tx:txn_90d",)), time.monotonic() + 0.25)
    assert time.monotonic() - t0 < 0.5  # queued behind the busy threads, abandoned at the deadline
    assert res.partial
    await asyncio.gather(*busy)


async def test_failed_clickhouse_view_is_unavailable(ch: ClickHouseSource) -> None:
    [res] = await ch.read([ViewQuery(TX, [1], [0], 42)])  # no table for data version 42
    assert not isinstance(res, ViewRead) and "tx" in str(res)


async def test_versions_drop_and_expire(ch: ClickHouseSource) -> None:
    await ch.write(
        TX, rows(TX, {"user_id": [1], "txn_90d": [1], "avg_basket": [1.0], "event_timestamp": [TS]}), 2
    )
    assert await ch.drop_version(TX, 2) == 1
    [res] = await ch.read([ViewQuery(TX, [1], [0], 2)])
    assert not isinstance(res, ViewRead)  # the table is gone
    await ch.write(
        TX, rows(TX, {"user_id": [1], "txn_90d": [1], "avg_basket": [1.0], "event_timestamp": [TS]}), 3
    )
    await ch.expire_version(TX, 3, 0)
    await ch._drop_expired()
    [res] = await ch.read([ViewQuery(TX, [1], [0], 3)])
    assert not isinstance(res, ViewRead)


async def test_materialize_from_a_clickhouse_table_into_redis(
    chdb_dsn: str, redis_server: RedisServer, tmp_path: Path
) -> None:
    """The offline side: a warehouse table in ClickHouse (with duplicate keys) -> Redis."""
    db_table = f"warehouse.tx_{uuid.uuid4().hex[:6]}"
    client = clickhouse_connect.get_client(dsn=ClickHouseOptions(dsn=chdb_dsn).client_dsn)
    client.command("CREATE DATABASE IF NOT EXISTS warehouse")
    client.command(
        f"CREATE TABLE {db_table} (user_id Int64, txn_90d Int64, avg_basket Float64, event_timestamp DateTime64(6, 'UTC'))"
        " ENGINE = MergeTree ORDER BY user_id"
    )
    client.command(
        f"INSERT INTO {db_table} SELECT number % 5000, number, number / 10, toDateTime64('2024-01-01 00:00:00', 6, 'UTC') + number"
        " FROM numbers(20000)"
    )
    view = FeatureView("tx", (U,), TX.features, online_store="default")
    registry = FileRegistry(tmp_path / "reg", "p")
    await registry.publish(make_definitions("p", [U], [view], []), expected_version=None)
    store = RedisSource("default", f"m{uuid.uuid4().hex[:6]}", RedisOptions(url=redis_server.url))
    await store.start()
    try:
        result = await Materializer(registry, store).run(
            "tx", ClickHouseTableSource(chdb_dsn, db_table), batch_rows=1000
        )
        assert result.rows_written == 5000 and result.data_version == 1
        [res] = await store.read([ViewQuery(view, [0, 4999, 5000], [0, 1], 1)])
        assert isinstance(res, ViewRead)
        assert res.found == [True, True, False]
        assert res.columns[0][:2] == [15000, 19999]  # the latest row of each key
    finally:
        await store.close()
        client.command(f"DROP TABLE {db_table}")
