"""Redis adapter specifics on real redis-server processes: layout, cluster spread,
versions, and failure (stop, restart, freeze)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import prometheus_client
import pyarrow as pa
import pytest
import redis

from featurestore import metric_buffers
from featurestore.errors import FailedPrecondition, Unavailable
from featurestore.model import DType, Entity, Feature, FeatureView
from featurestore.rows import view_schema
from featurestore.sources.base import SourceState, ViewQuery, ViewRead
from featurestore.sources.redis import RedisOptions, RedisSource
from featurestore.sources.redis_batch import COMPANY
from tests.servers import RedisCluster, RedisServer
from tests.support import REDIS_CONNECT_MS, eventually
from tests.unit.test_redis_batch_hold import InFlight, in_call

U, ITEM = Entity("user_id", DType.INT64), Entity("item_id", DType.STRING)
V = FeatureView("prof", (U,), (Feature("age", DType.INT64), Feature("name", DType.STRING)))
PAIR = FeatureView("pair", (U, ITEM), (Feature("score", DType.FLOAT64),))
TS = 1_704_067_200_000_000


def table(view: FeatureView, data: dict[str, list[Any]]) -> pa.Table:
    schema = view_schema(view)
    return pa.table({f.name: pa.array(data[f.name], f.type) for f in schema}, schema=schema)


def redis_options(url: str, **more: Any) -> RedisOptions:
    """Options for ``url`` with the tests' connect timeout (``REDIS_CONNECT_MS``), and ``more``."""
    return RedisOptions(url=url, connect_timeout_ms=REDIS_CONNECT_MS, **more)


def users(ids: list[int], version_mark: int = 0) -> pa.Table:
    return table(
        V,
        {
            "user_id": ids,
            "age": [i + version_mark for i in ids],
            "name": [f"u{i}" for i in ids],
            "event_timestamp": [TS] * len(ids),
        },
    )


@pytest.fixture
async def source(redis_server: RedisServer) -> AsyncIterator[RedisSource]:
    src = RedisSource(
        "r",
        f"p{uuid.uuid4().hex[:8]}",
        redis_options(redis_server.url, pool_size=4, health_interval_ms=100),
    )
    await src.start()
    yield src
    await src.close()


async def test_storage_layout_is_the_contract(source: RedisSource, redis_server: RedisServer) -> None:
    await source.write(V, users([17]), 3)
    await source.write(
        PAIR, table(PAIR, {"user_id": [1], "item_id": ["a"], "score": [0.5], "event_timestamp": [TS + 1]}), 1
    )
    r = redis.Redis.from_url(redis_server.url)
    project = source._project
    assert msgspec.msgpack.decode(r.get(f"fs:{project}:prof:v3:17")) == [17, "u17", TS]  # type: ignore[arg-type]
    assert msgspec.msgpack.decode(r.get(f"fs:{project}:pair:v1:1|a")) == [0.5, TS + 1]  # type: ignore[arg-type]
    r.close()


async def test_cluster_spreads_keys_over_every_node(redis_cluster: RedisCluster) -> None:
    src = RedisSource("c", f"p{uuid.uuid4().hex[:8]}", redis_options(redis_cluster.url, cluster=True))
    await src.start()
    before = [int(n.cli("dbsize")) for n in redis_cluster.nodes]
    await src.write(V, users(list(range(1, 301))), 1)
    after = [int(n.cli("dbsize")) for n in redis_cluster.nodes]
    assert all(a - b > 50 for a, b in zip(after, before, strict=True)), (before, after)
    [res] = await src.read([ViewQuery(V, list(range(1, 301)), [0], 1)])
    assert isinstance(res, ViewRead) and res.columns[0] == list(range(1, 301))
    await src.close()


async def test_dropping_a_version_on_a_cluster_deletes_its_keys_on_every_node(
    redis_cluster: RedisCluster,
) -> None:
    project = f"p{uuid.uuid4().hex[:8]}"
    src = RedisSource("c", project, redis_options(redis_cluster.url, cluster=True))
    await src.start()

    def keys() -> int:
        return sum(len(n.cli("--scan", "--pattern", f"fs:{project}:*").split()) for n in redis_cluster.nodes)

    try:
        await src.write(V, users(list(range(1, 301))), 1)
        assert keys() == 301  # the rows and the marker
        assert await src.drop_version(V, 1) == 300
        assert keys() == 0
    finally:
        await src.close()


async def test_drop_and_expire_versions(source: RedisSource, redis_server: RedisServer) -> None:
    await source.write(V, users([1, 2, 3]), 1)
    await source.write(V, users([1, 2, 3]), 2)
    assert await source.drop_version(V, 2) == 3
    # a version that is gone is not "every key missing": that would be a wrong answer
    [res] = await source.read([ViewQuery(V, [1, 2], [0], 2)])
    assert isinstance(res, Unavailable) and "data version 2 is not in the store" in res.message
    assert await source.expire_version(V, 1, 100) == 3
    r = redis.Redis.from_url(redis_server.url)
    assert 0 < r.ttl(f"fs:{source._project}:prof:v1:1") <= 100
    assert 0 < r.ttl(f"fs:{source._project}:prof:v1") <= 100
    # a push from a server that has not switched yet must not land in (and un-expire)
    # the retiring version
    with pytest.raises(Unavailable, match="expiring"):
        await source.write(V, users([9]), 1)
    assert r.get(f"fs:{source._project}:prof:v1:9") is None
    assert 0 < r.ttl(f"fs:{source._project}:prof:v1") <= 100
    r.close()


async def test_a_version_without_rows_still_reads_as_present(source: RedisSource) -> None:
    assert await source.write(V, users([]), 3) == 0
    [res] = await source.read([ViewQuery(V, [1], [0], 3)])
    assert isinstance(res, ViewRead) and res.found == [False]
    # version 0 means never materialized: nothing there, and nothing wrong
    [res] = await source.read([ViewQuery(V, [1], [0], 0)])
    assert isinstance(res, ViewRead) and res.found == [False]


async def test_schema_mismatch_is_unavailable_not_wrong_values(
    source: RedisSource, redis_server: RedisServer
) -> None:
    r = redis.Redis.from_url(redis_server.url)
    r.set(f"fs:{source._project}:prof:v1", V.layout)
    r.set(f"fs:{source._project}:prof:v1:5", msgspec.msgpack.encode([5, TS]))  # written for an older schema
    r.close()
    [res] = await source.read([ViewQuery(V, [5], [0], 1)])
    assert isinstance(res, Unavailable) and "re-materialize" in res.message


async def test_rows_of_another_definition_are_refused_on_read_and_write(source: RedisSource) -> None:
    renamed = FeatureView("prof", V.entities, (Feature("age_renamed", V.features[0].dtype), *V.features[1:]))
    await source.write(V, users([1]), 1)
    [res] = await source.read([ViewQuery(renamed, [1, 2], [0], 1)])
    assert isinstance(res, Unavailable) and "another definition" in res.message
    with pytest.raises(FailedPrecondition, match="materialize"):
        await source.write(
            renamed, users([1]).rename_columns(["user_id", "age_renamed", "name", "event_timestamp"]), 1
        )
    # a fresh data version (what materialization writes) takes the new definition
    await source.write(
        renamed, users([1]).rename_columns(["user_id", "age_renamed", "name", "event_timestamp"]), 2
    )
    [res] = await source.read([ViewQuery(renamed, [1], [0], 2)])
    assert isinstance(res, ViewRead) and res.columns == [[1]]
    # dropping a version drops its marker with it
    await source.drop_version(V, 1)
    await source.write(
        renamed, users([3]).rename_columns(["user_id", "age_renamed", "name", "event_timestamp"]), 1
    )


@pytest.mark.parametrize("auto_pipeline", [False, True])
async def test_stopped_redis_fails_fast_and_recovers(tmp_path: Path, auto_pipeline: bool) -> None:
    server = RedisServer(tmp_path / "r").start()
    options = redis_options(server.url, pool_size=4, health_interval_ms=100, auto_pipeline=auto_pipeline)
    src = RedisSource("r", "p", options)
    await src.start()
    try:
        await src.write(V, users([1]), 1)
        server.stop()
        with pytest.raises(Unavailable):
            await src.read([ViewQuery(V, [1], [0], 1)])
        assert src.state() is SourceState.DOWN
        # circuit open: answered from the known state, no connection attempted
        [res] = await src.read([ViewQuery(V, [1], [0], 1)])
        assert isinstance(res, Unavailable) and res.message == "redis store 'r' is down"
        server.start()  # same port, fresh process
        await eventually(lambda: src.state() is SourceState.READY, 5, "state READY")
        assert src.state() is SourceState.READY
        await src.write(V, users([1]), 1)  # the restarted server is empty
        [res] = await src.read([ViewQuery(V, [1], [0], 1)])
        assert isinstance(res, ViewRead) and res.columns == [[1]]
    finally:
        await src.close()
        server.stop()


@pytest.mark.parametrize("auto_pipeline", [False, True])
async def test_pooled_connections_redis_closed_while_idle_are_replaced_without_opening_the_circuit(
    tmp_path: Path, auto_pipeline: bool
) -> None:
    """What Redis's `timeout` (or a proxy's idle limit) does to a pool's idle sockets,
    done at once: the server closes every connection whose last command was a read."""
    server = RedisServer(tmp_path / "r").start()
    name = f"idle{uuid.uuid4().hex[:8]}"  # the store's name, and the client name of its connections
    options = redis_options(
        f"{server.url}?client_name={name}",
        pool_size=4,
        health_interval_ms=100,
        auto_pipeline=auto_pipeline,
    )
    src = RedisSource(name, "p", options)
    await src.start()
    try:
        await src.write(V, users(list(range(1, 70))), 1)
        big = ViewQuery(V, list(range(1, 70)), [0], 1)  # 70 keys: past auto-pipelining, a connection each
        await asyncio.gather(*(src.read([big]) for _ in range(4)))  # the pool's 4 connections, now idle
        assert server.kill_clients(name, "mget") == 4
        reads = await asyncio.gather(
            *(src.read([ViewQuery(V, [k], [0], 1)]) for k in (1, 2, 3)), src.read([big])
        )
        assert [r.columns for [r] in reads] == [[[1]], [[2]], [[3]], [list(range(1, 70))]]  # type: ignore[union-attr]
        assert src.state() is SourceState.READY
        retried = prometheus_client.REGISTRY.get_sample_value(
            "featurestore_source_read_retries_total", {"store": name}
        )
        assert retried is not None and retried >= 1
    finally:
        await src.close()
        server.stop()


async def test_a_refused_client_is_not_retried_and_a_read_during_close_leaves_the_store_up(
    tmp_path: Path,
) -> None:
    server = RedisServer(tmp_path / "r").start()
    name = f"auth{uuid.uuid4().hex[:8]}"
    src = RedisSource(name, "p", redis_options(server.url, pool_size=2, health_interval_ms=100))
    await src.start()
    try:
        server.cli("CONFIG", "SET", "requirepass", "s3cret")  # the store's new connections are refused
        with pytest.raises(Unavailable):
            await src.read([ViewQuery(V, [1], [0], 1)])
        assert prometheus_client.REGISTRY.get_sample_value(
            "featurestore_source_read_retries_total", {"store": name}
        ) in (None, 0.0)
    finally:
        await src.close()
        server.stop()
    # a store closed while a read is in flight: the read fails, the store is not marked down
    server = RedisServer(tmp_path / "r2").start()
    src = RedisSource(name + "c", "p", redis_options(server.url, pool_size=2, health_interval_ms=100))
    await src.start()
    try:
        server.pause()  # the read waits on the socket until the close ends it
        read = asyncio.ensure_future(src.read([ViewQuery(V, [1], [0], 1)]))
        await asyncio.sleep(0.05)
        await src.close()
        outcome = await asyncio.gather(read, return_exceptions=True)
        assert isinstance(outcome[0], (Unavailable, asyncio.CancelledError)), outcome
        assert src.state() is SourceState.READY
    finally:
        server.resume()
        server.stop()


@pytest.mark.parametrize("auto_pipeline", [False, True])
async def test_frozen_redis_goes_down_and_recovers(tmp_path: Path, auto_pipeline: bool) -> None:
    server = RedisServer(tmp_path / "r").start()
    # the default connect timeout: it is the probe's socket timeout, and DOWN must come within 3 s
    options = RedisOptions(url=server.url, pool_size=4, health_interval_ms=100, auto_pipeline=auto_pipeline)
    src = RedisSource("r", "p", options)
    await src.start()
    try:
        await src.write(V, users([1]), 1)
        server.pause()
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.2):
                await src.read([ViewQuery(V, [1], [0], 1)])
        await eventually(lambda: src.state() is SourceState.DOWN, 3, "state DOWN")
        assert src.state() is SourceState.DOWN
        server.resume()
        await eventually(lambda: src.state() is SourceState.READY, 5, "state READY")
        [res] = await src.read([ViewQuery(V, [1], [0], 1)])
        assert isinstance(res, ViewRead) and res.columns == [[1]]
    finally:
        await src.close()
        server.stop()


@pytest.mark.parametrize("auto_pipeline", [False, True])
async def test_concurrent_reads_are_answered_alike_and_auto_pipelining_shares_one_connection(
    redis_server: RedisServer, auto_pipeline: bool
) -> None:
    name = f"ap{uuid.uuid4().hex[:8]}"  # the client name Redis lists this source's connections under
    src = RedisSource(
        "r",
        f"p{uuid.uuid4().hex[:8]}",
        redis_options(f"{redis_server.url}?client_name={name}", pool_size=8, auto_pipeline=auto_pipeline),
    )
    await src.start()
    try:
        await src.prepare([V])
        await src.write(V, users(list(range(1, 41))), 0)
        before = redis_server.cli("CLIENT", "LIST").count(f"name={name} ")
        reads = await asyncio.gather(
            *(src.read([ViewQuery(V, [i, 1000 + i], [0, 1], 0)]) for i in range(1, 41))
        )
        for i, [got] in enumerate(reads, start=1):
            assert isinstance(got, ViewRead)
            assert got.found == [True, False] and got.columns[0][0] == i and got.columns[1][0] == f"u{i}"
        opened = redis_server.cli("CLIENT", "LIST").count(f"name={name} ") - before
        # the 40 reads of one tick: one write on one connection, or one connection each up to the pool size
        assert opened == (1 if auto_pipeline else 8)
    finally:
        await src.close()


async def test_an_auto_pipelined_store_reads_a_large_join_on_its_own_alike(redis_server: RedisServer) -> None:
    src = RedisSource("r", f"p{uuid.uuid4().hex[:8]}", redis_options(redis_server.url, auto_pipeline=True))
    await src.start()
    try:
        await src.prepare([V])
        await src.write(V, users(list(range(1, 101))), 0)
        big, small = await asyncio.gather(
            src.read([ViewQuery(V, list(range(1, 201)), [0], 0)]),  # over the 64 coalesced keys
            src.read([ViewQuery(V, [5], [1], 0)]),
        )
        assert isinstance(big[0], ViewRead) and big[0].found == [True] * 100 + [False] * 100
        assert big[0].columns[0][:100] == list(range(1, 101))
        assert isinstance(small[0], ViewRead) and small[0].columns == [["u5"]]
    finally:
        await src.close()


def pipeline_writes(store: str, held: str) -> float:
    metric_buffers.flush()
    value = prometheus_client.REGISTRY.get_sample_value(
        "featurestore_redis_pipeline_writes_total", {"store": store, "held": held}
    )
    return value or 0.0


@pytest.mark.parametrize(("hold", "held"), [(16, "true"), (0, "false")])
async def test_the_stores_hold_iterations_option_decides_whether_a_grpc_calls_write_is_held(
    redis_server: RedisServer, hold: int, held: str
) -> None:
    name = f"hold{uuid.uuid4().hex[:8]}"
    src = RedisSource(name, "p", redis_options(redis_server.url, pool_size=4, hold_iterations=hold))
    await src.start()
    try:
        await src.write(V, users([1, 2]), 1)
        before = pipeline_writes(name, held)
        calls = InFlight(COMPANY + 1)  # a gRPC call with company in flight
        reads = [in_call(src.read([ViewQuery(V, [i], [0], 1)]), calls) for i in (1, 2)]
        for [res] in await asyncio.wait_for(asyncio.gather(*reads), 5):
            assert isinstance(res, ViewRead) and res.found == [True]
        assert pipeline_writes(name, held) > before  # the option reached the store's pipeline
    finally:
        await src.close()
