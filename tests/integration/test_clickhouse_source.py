"""The ClickHouse store on the real engine (chdb in this process): SQL safety, a join
across ClickHouse and other stores, a saturated, hung, unreachable or refusing
ClickHouse, and materialization from a ClickHouse table into Redis.

No assertion here depends on timing: pool threads are held on an event (``holding``)
so a test decides when they free up, and waits are bounded by generous timeouts that
only a hang reaches."""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import clickhouse_connect
import pyarrow as pa
import pytest
from clickhouse_connect.driver.exceptions import ClickHouseError

from featurestore.config import Config, StoreConfig
from featurestore.definitions.snapshot import new_snapshot
from featurestore.errors import InvalidArgument, Unavailable
from featurestore.factories import make_store
from featurestore.join import JoinEngine, JoinRequest, Limits
from featurestore.materialize import Materializer
from featurestore.model import DType, Entity, Feature, FeatureView, Status, make_definitions
from featurestore.offline import ClickHouseOfflineSource
from featurestore.plan import ServingState
from featurestore.registry.file import FileRegistry
from featurestore.rows import view_schema
from featurestore.sources.base import DataMissing, SourceState, ViewQuery, ViewRead
from featurestore.sources.clickhouse import ClickHouseOnlineSource, ClickHouseOptions, online_table_ddl
from featurestore.sources.clickhouse.codec import MAX_PARAM_BYTES, key_chunks, query_chunks
from featurestore.sources.clickhouse.sql import SelectCache, select_sql, table_name
from featurestore.sources.memory import MemorySource
from featurestore.sources.redis import RedisOptions, RedisSource
from tests.servers import RedisServer
from tests.support import REDIS_CONNECT_MS, eventually, free_port

U = Entity("user_id", DType.INT64)
M = Entity("merchant", DType.STRING)
TX = FeatureView(
    "tx", (U,), (Feature("txn_90d", DType.INT64), Feature("avg_basket", DType.FLOAT64)), online_store="ch"
)
PROFILE = FeatureView("profile", (U,), (Feature("age", DType.INT64),), online_store="mem")
SHOP = FeatureView("shop", (M,), (Feature("risk", DType.FLOAT64),), online_store="ch")
TS = 1_704_067_200_000_000
DEFS = make_definitions("p", [U, M], [TX, PROFILE, SHOP], [])
# Long enough that no health round runs during a test that counts pool slots.
QUIET = 600_000


def rows(view: FeatureView, data: dict[str, list[Any]]) -> pa.Table:
    schema = view_schema(view)
    return pa.table({f.name: pa.array(data[f.name], f.type) for f in schema}, schema=schema)


@pytest.fixture
async def ch(chdb_dsn: str) -> AsyncIterator[ClickHouseOnlineSource]:
    src = ClickHouseOnlineSource(
        "ch", f"t{uuid.uuid4().hex[:8]}", ClickHouseOptions(dsn=chdb_dsn, threads=2, max_queued=2)
    )
    await src.start()
    await src.prepare([TX, SHOP])
    yield src
    await src.close()


@pytest.fixture
async def quiet_ch(chdb_dsn: str) -> AsyncIterator[ClickHouseOnlineSource]:
    """Two threads, two queue places, and no health round to take a slot meanwhile."""
    src = ClickHouseOnlineSource(
        "ch",
        f"t{uuid.uuid4().hex[:8]}",
        ClickHouseOptions(dsn=chdb_dsn, threads=2, max_queued=2, health_interval_ms=QUIET),
    )
    await src.start()
    await src.prepare([TX, SHOP])
    yield src
    await src.close()


class _Held:
    """A pool call that parks its thread until the test releases it."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self._lock = threading.Lock()
        self.started = 0

    def __call__(self, client: Any) -> None:
        with self._lock:
            self.started += 1
        self.release.wait(120)


@contextlib.asynccontextmanager
async def holding(src: ClickHouseOnlineSource, threads: int) -> AsyncIterator[None]:
    """Every one of ``threads`` pool threads busy until the block ends."""
    held = _Held()
    calls = [asyncio.ensure_future(src.pool.run(held)) for _ in range(threads)]
    try:
        await eventually(lambda: held.started == threads, 30, f"{threads} pool threads held")
        yield
    finally:
        held.release.set()
        await asyncio.gather(*calls)


async def queue_up(
    src: ClickHouseOnlineSource, calls: list[Callable[[], Awaitable[Any]]]
) -> list[asyncio.Future[Any]]:
    """Start calls that queue behind held threads; return once all have taken a slot."""
    before = src.pool.in_flight
    futures: list[asyncio.Future[Any]] = [asyncio.ensure_future(c()) for c in calls]
    await eventually(lambda: src.pool.in_flight == before + len(calls), 30, "calls queued")
    return futures


def test_sql_is_built_from_identifiers_only() -> None:
    sql = select_sql("featurestore", "p__shop__v1", SHOP, [0])
    assert sql.endswith("WHERE `__key` IN {keys:Array(String)}")
    ddl = online_table_ddl("featurestore", "p", TX, 3)
    assert "ENGINE = EmbeddedRocksDB PRIMARY KEY `__key`" in ddl and "`p__tx__v3`" in ddl


async def test_hostile_keys_are_parameters_not_sql(ch: ClickHouseOnlineSource) -> None:
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
    assert await ch.pool.run(lambda c: c.command("EXISTS TABLE featurestore.__expiry")) == 1


def test_keys_are_split_so_no_query_s_parameter_passes_a_server_s_form_field_limit() -> None:
    ints = list(range(-5_000, 5_000))
    parts = key_chunks(ints)
    assert [k for p in parts for k in p] == ints and len(parts) == 3
    assert all(len(",".join(map(str, p))) + 2 <= MAX_PARAM_BYTES for p in parts)
    texts = [f"店-{i}-'\\" for i in range(10_000)]  # 3-byte characters, a quote, a backslash
    parts = key_chunks(texts)
    assert [k for p in parts for k in p] == texts and len(parts) > 1
    assert all(sum(4 * len(k.encode()) + 3 for k in p) <= MAX_PARAM_BYTES for p in parts)


async def test_a_read_of_10000_keys_is_answered_in_order_across_its_queries(
    ch: ClickHouseOnlineSource,
) -> None:
    ids = list(range(1, 10_001))
    await ch.write(TX, rows(TX, {"user_id": ids, "txn_90d": ids, "avg_basket": [1.5] * len(ids),
                                 "event_timestamp": [TS] * len(ids)}), 1)  # fmt: skip
    wanted = [*reversed(ids), 0]
    assert len(key_chunks(wanted)) == 3
    [res] = await ch.read([ViewQuery(TX, wanted, [0], 1)])
    assert isinstance(res, ViewRead) and res.found == [True] * len(ids) + [False]
    assert res.columns[0] == [*reversed(ids), None]


async def test_join_across_clickhouse_and_memory(ch: ClickHouseOnlineSource) -> None:
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
        time.monotonic() + 30,  # as the other joins here: 2 s could pass on the loaded CI machine
    )
    cols = {c.name: c for c in res.columns}
    assert cols["age"].values == [30, 40, None, 30]
    assert cols["txn_90d"].values == [5, None, 7, 5]
    outcome = cols["avg_basket"].outcome
    assert outcome is not None
    assert outcome.statuses == [Status.PRESENT, Status.NOT_FOUND, Status.PRESENT, Status.PRESENT]
    assert not res.partial


async def test_saturated_clickhouse_cannot_starve_other_views(quiet_ch: ClickHouseOnlineSource) -> None:
    mem = MemorySource("mem")
    await mem.prepare([PROFILE])
    await mem.write(PROFILE, rows(PROFILE, {"user_id": [1], "age": [30], "event_timestamp": [TS]}), 0)
    engine = JoinEngine({"ch": quiet_ch, "mem": mem}, ServingState(new_snapshot(DEFS, 1)), Limits())
    req = JoinRequest({"user_id": [1]}, ("profile:age", "tx:txn_90d"))
    async with holding(quiet_ch, 2):
        fillers = await queue_up(quiet_ch, [lambda: quiet_ch.pool.run(lambda c: c.command("SELECT 1"))] * 2)
        # Threads and queue are full: the read must fail at once. Had it queued, it
        # would wait for threads that stay held until this block ends.
        async with asyncio.timeout(30):
            res = await engine.join(req, time.monotonic() + 60)
        cols = {c.name: c for c in res.columns}
        assert cols["age"].values == [30]  # the memory view answers
        assert cols["txn_90d"].outcome.statuses == [Status.UNAVAILABLE]  # type: ignore[union-attr]
        assert res.partial
    await asyncio.gather(*fillers)
    res = await engine.join(req, time.monotonic() + 30)
    assert {c.name: c for c in res.columns}["txn_90d"].outcome.statuses == [Status.NOT_FOUND]  # type: ignore[union-attr]


async def test_slow_clickhouse_answers_unavailable_within_the_deadline(
    quiet_ch: ClickHouseOnlineSource,
) -> None:
    engine = JoinEngine({"ch": quiet_ch}, ServingState(new_snapshot(DEFS, 1)), Limits())
    async with holding(quiet_ch, 2):
        # queued behind held threads: only the deadline can end it, while they stay held
        async with asyncio.timeout(30):
            res = await engine.join(JoinRequest({"user_id": [1]}, ("tx:txn_90d",)), time.monotonic() + 0.25)
        assert res.partial


async def test_reads_abandoned_while_queued_give_their_slots_back(quiet_ch: ClickHouseOnlineSource) -> None:
    engine = JoinEngine({"ch": quiet_ch}, ServingState(new_snapshot(DEFS, 1)), Limits())
    req = JoinRequest({"user_id": [1]}, ("tx:txn_90d",))
    async with holding(quiet_ch, 2):
        # Both reads fill the queue behind the held threads and are cancelled there
        # at their deadline: they never run, and their slots must come back anyway.
        results = await asyncio.gather(*(engine.join(req, time.monotonic() + 0.2) for _ in range(2)))
        assert all(r.partial for r in results)
        await eventually(lambda: quiet_ch.pool.in_flight == 2, 30, "the abandoned reads' slots back")
    await eventually(lambda: quiet_ch.pool.in_flight == 0, 30, "every slot back")
    # The whole capacity again: threads held and the queue full, then everything answers.
    async with holding(quiet_ch, 2):
        queued = await queue_up(quiet_ch, [lambda: engine.join(req, time.monotonic() + 60)] * 2)
    answers = await asyncio.gather(*queued)
    assert [r.partial for r in answers] == [False, False]
    # Every call has ended, and a call gives its slot back before its awaiter resumes:
    # a slot given back twice would show here as a count below zero.
    assert quiet_ch.pool.in_flight == 0


async def test_health_probe_does_not_wait_behind_user_reads(quiet_ch: ClickHouseOnlineSource) -> None:
    async with holding(quiet_ch, 2):
        fillers = await queue_up(quiet_ch, [lambda: quiet_ch.pool.run(lambda c: c.command("SELECT 1"))] * 2)
        async with asyncio.timeout(30):
            assert await quiet_ch.check() is SourceState.READY
    await asyncio.gather(*fillers)


async def test_unreachable_clickhouse_at_start_fails_only_its_views() -> None:
    """Nothing listens on the port: start and prepare must not raise (the server would
    not start, taking every other store's views down too), its views read UNAVAILABLE
    naming the cause, and the other stores answer."""
    src = ClickHouseOnlineSource(
        "ch", "p", ClickHouseOptions(dsn=f"http://127.0.0.1:{free_port()}", timeout_ms=1000)
    )
    mem = MemorySource("mem")
    await mem.prepare([PROFILE])
    await mem.write(PROFILE, rows(PROFILE, {"user_id": [1], "age": [30], "event_timestamp": [TS]}), 0)
    try:
        async with asyncio.timeout(60):
            await src.start()
            assert src.state() is SourceState.DOWN
            await src.prepare([TX, SHOP])
            [res] = await src.read([ViewQuery(TX, [1], [0], 0)])
            assert isinstance(res, Unavailable) and "Connection refused" in str(res), res
            engine = JoinEngine({"ch": src, "mem": mem}, ServingState(new_snapshot(DEFS, 1)), Limits())
            joined = await engine.join(
                JoinRequest({"user_id": [1]}, ("profile:age", "tx:txn_90d")), time.monotonic() + 30
            )
        cols = {c.name: c for c in joined.columns}
        assert cols["age"].values == [30]
        assert cols["txn_90d"].outcome.statuses == [Status.UNAVAILABLE]  # type: ignore[union-attr]
    finally:
        await src.close()


async def test_hung_clickhouse_is_down_and_frees_threads_within_its_timeout() -> None:
    """The kernel accepts connections on a listening socket nobody serves: requests get
    no answer. clickhouse-connect's own read timeout is 300 s; the store's is 1 s."""
    hung = socket.socket()
    hung.bind(("127.0.0.1", 0))
    hung.listen(16)
    src = ClickHouseOnlineSource(
        "ch",
        "p",
        ClickHouseOptions(dsn=f"http://127.0.0.1:{hung.getsockname()[1]}", threads=1, timeout_ms=1000),
    )
    try:
        async with asyncio.timeout(60):
            await src.start()
            assert src.state() is SourceState.DOWN
            await src.prepare([TX])
            [res] = await src.read([ViewQuery(TX, [1], [0], 0)])
            # Whichever of the two 1 s bounds fires first (the store's wait or the HTTP
            # client's read timeout, a race under load), the read names the silence.
            assert isinstance(res, Unavailable), res
            assert "no answer" in str(res) or "timed out" in str(res).lower(), res
            with pytest.raises(ClickHouseError):  # a call on a user thread ends by itself
                await src.pool.run(lambda c: c.command("SELECT 1"))
    finally:
        hung.close()  # resets whatever still waits on it, should a timeout not have fired
        await src.close()


async def test_tables_refused_at_prepare_are_created_once_clickhouse_accepts_them(chdb_dsn: str) -> None:
    # A Dictionary database refuses CREATE TABLE, until the test drops it.
    db = f"fs_{uuid.uuid4().hex[:8]}"
    admin = clickhouse_connect.get_client(dsn=ClickHouseOptions(dsn=chdb_dsn).client_dsn)
    admin.command(f"CREATE DATABASE `{db}` ENGINE = Dictionary")
    src = ClickHouseOnlineSource(
        "ch", f"t{uuid.uuid4().hex[:8]}", ClickHouseOptions(dsn=chdb_dsn, database=db, health_interval_ms=50)
    )
    try:
        await src.start()
        await src.prepare([TX])
        assert src.state() is SourceState.DEGRADED
        [res] = await src.read([ViewQuery(TX, [1], [0], 0)])
        assert isinstance(res, Unavailable) and "'tx'" in str(res) and "NOT_IMPLEMENTED" in str(res), res
        admin.command(f"DROP DATABASE `{db}`")
        await eventually(lambda: src.state() is SourceState.READY, 30, "the health loop to create the table")
        [res] = await src.read([ViewQuery(TX, [1], [0], 0)])
        assert isinstance(res, ViewRead) and res.found == [False]
    finally:
        await src.close()
        admin.command(f"DROP DATABASE IF EXISTS `{db}`")
        admin.close()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"threads": 0}, "threads: expected an integer >= 1, got 0"),
        ({"threads": True}, "threads: expected an integer >= 1, got True"),
        ({"max_queued": -1}, "max_queued: expected an integer >= 0, got -1"),
        ({"health_interval_ms": 0}, "health_interval_ms: expected an integer >= 10, got 0"),
        ({"timeout_ms": "5s"}, "timeout_ms: expected an integer >= 10, got '5s'"),
        ({"database": "fs`; DROP"}, "database: expected a name of letters, digits and _"),
        ({"dsn": "clickhouse://u:secret@h:9000"}, "dsn: unsupported scheme 'clickhouse'"),
        ({"thread": 4}, "thread: unknown clickhouse store option; known: "),
    ],
)
def test_bad_store_options_are_refused_naming_the_option(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)) as err:
        ClickHouseOptions.from_mapping(options)
    assert "secret" not in str(err.value)
    # what the server makes of it: a config error naming the store and the option
    with pytest.raises(InvalidArgument, match=re.escape(f"stores.ch: {message}")):
        make_store("ch", StoreConfig(kind="clickhouse", options=options), Config())


async def test_one_select_serves_every_data_version(ch: ClickHouseOnlineSource) -> None:
    for version in (1, 2, 3):
        await ch.write(
            TX,
            rows(TX, {"user_id": [1], "txn_90d": [version], "avg_basket": [0.5], "event_timestamp": [TS]}),
            version,
        )
        [res] = await ch.read([ViewQuery(TX, [1], [0], version)])
        assert isinstance(res, ViewRead) and res.columns == [[version]]
    assert len(ch.selects) == 1  # one projection, whatever the data version
    for features in ([1], [0, 1], [1, 0], [0]):
        [res] = await ch.read([ViewQuery(TX, [1], features, 3)])
        assert isinstance(res, ViewRead) and len(res.columns) == len(features)
    assert len(ch.selects) == 4


def test_select_cache_holds_at_most_its_size_and_still_answers_past_it() -> None:
    cache = SelectCache("featurestore", size=2)
    for features in ([1], [0, 1], [1, 0], [0]):
        assert cache.sql(TX, features, "p__tx__v3") == select_sql("featurestore", "p__tx__v3", TX, features)
    assert len(cache) == 2


async def test_failed_clickhouse_view_is_unavailable(ch: ClickHouseOnlineSource) -> None:
    [res] = await ch.read([ViewQuery(TX, [1], [0], 42)])  # no table for data version 42
    assert not isinstance(res, ViewRead) and "tx" in str(res)


async def test_versions_drop_and_expire(ch: ClickHouseOnlineSource) -> None:
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
    assert await ch.check() is SourceState.READY  # a health round drops what has expired
    [res] = await ch.read([ViewQuery(TX, [1], [0], 3)])
    assert not isinstance(res, ViewRead)


async def test_a_push_into_a_version_whose_table_is_gone_is_refused_not_created_again(
    ch: ClickHouseOnlineSource, chdb_dsn: str
) -> None:
    one = rows(TX, {"user_id": [1], "txn_90d": [1], "avg_basket": [1.0], "event_timestamp": [TS]})
    await ch.mark_version(TX, 4)
    assert await ch.has_version(TX, 4)  # a materialization's version exists before its rows
    await ch.write(TX, one, 4, create=False)  # a push into it
    client = clickhouse_connect.get_client(dsn=ClickHouseOptions(dsn=chdb_dsn).client_dsn)
    table = f"`{ch.options.database}`.`{table_name(ch._project, 'tx', 4)}`"
    client.command(f"DROP TABLE {table}")  # lost behind the server's back
    ch.serving({"tx": 4})
    [res] = await ch.read([ViewQuery(TX, [1], [0], 4)])  # a read finds it gone
    assert isinstance(res, DataMissing)
    with pytest.raises(DataMissing):
        await ch.write(TX, one, 4, create=False)
    assert not await ch.has_version(TX, 4)
    # a table this process created, dropped with no read between (a run that published
    # first drops a losing run's version as an orphan): the write finds it gone too
    await ch.mark_version(TX, 5)
    client.command(f"DROP TABLE `{ch.options.database}`.`{table_name(ch._project, 'tx', 5)}`")
    with pytest.raises(DataMissing):
        await ch.write(TX, one, 5, create=False)
    assert not await ch.has_version(TX, 5)


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
    options = RedisOptions(url=redis_server.url, connect_timeout_ms=REDIS_CONNECT_MS)
    store = RedisSource("default", f"m{uuid.uuid4().hex[:6]}", options)
    await store.start()
    try:
        result = await Materializer(registry, store).run(
            "tx", ClickHouseOfflineSource(chdb_dsn, db_table), batch_rows=1000
        )
        assert result.rows_written == 5000 and result.data_version == 1
        [res] = await store.read([ViewQuery(view, [0, 4999, 5000], [0, 1], 1)])
        assert isinstance(res, ViewRead)
        assert res.found == [True, True, False]
        assert res.columns[0][:2] == [15000, 19999]  # the latest row of each key
    finally:
        await store.close()
        client.command(f"DROP TABLE {db_table}")


def test_a_chunked_read_starts_no_more_queries_once_it_has_run_for_its_timeout() -> None:
    class SlowClient:
        def __init__(self) -> None:
            self.queries = 0

        def query(self, sql: str, **_: Any) -> Any:
            self.queries += 1
            time.sleep(0.03)
            return type("Result", (), {"result_rows": [(self.queries,)]})()

    client = SlowClient()
    settings = {"max_execution_time": 0.05}
    with pytest.raises(TimeoutError, match=r"ran past 0\.05 s"):
        query_chunks("SELECT", [[1]] * 10, {}, settings, client)
    assert client.queries < 10  # (2 on an idle machine: the third would start 60 ms in)
    fast = SlowClient()
    assert query_chunks("SELECT", [[1]], {}, {"max_execution_time": 0.05}, fast) == [(1,)]
