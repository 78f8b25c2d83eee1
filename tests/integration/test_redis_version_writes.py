"""Writes and the life of a data version on a real redis-server: a materialization creates
a version (even an empty one), a push never does; a version that starts expiring takes
no more pushed rows, and none it took stays without a TTL; a closed store writes nothing."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import redis

from featurestore.errors import Unavailable
from featurestore.materialize import Materializer
from featurestore.model import make_definitions
from featurestore.offline import EventTimeRange, ParquetOfflineSource
from featurestore.registry.file import FileRegistry
from featurestore.sources import redis as redis_source
from featurestore.sources.base import DataMissing, ViewQuery, ViewRead
from featurestore.sources.redis import RedisSource
from featurestore.sources.redis_read import for_version_keys as scan
from tests.integration.test_materialize import TS0, U, write_source
from tests.integration.test_materialize import V as SCORES
from tests.integration.test_redis_source import V, redis_options, users
from tests.servers import RedisCluster, RedisServer
from tests.support import eventually


@pytest.fixture
async def source(redis_server: RedisServer) -> AsyncIterator[RedisSource]:
    src = RedisSource("r", f"p{uuid.uuid4().hex[:8]}", redis_options(redis_server.url, health_interval_ms=50))
    await src.start()
    yield src
    await src.close()


def client(server: RedisServer) -> redis.Redis:
    return redis.Redis.from_url(server.url)


def lose(r: redis.Redis, store: RedisSource) -> None:
    """Redis loses the store's data (a restart without persistence, a flush)."""
    for key in r.scan_iter(match=f"fs:{store._project}:*"):
        r.delete(key)


def after_the_check(monkeypatch: pytest.MonkeyPatch, store: RedisSource, then: Callable[[], object]) -> None:
    """Run ``then`` right after the store's first command (a write's check of the marker),
    before its batches."""
    calls = 0
    idempotent = store._idempotent

    async def checked(command: Callable[[], Awaitable[Any]]) -> Any:
        nonlocal calls
        calls += 1
        out = await idempotent(command)
        if calls == 1:
            then()
        return out

    monkeypatch.setattr(store, "_idempotent", checked)


async def test_a_push_into_a_version_redis_lost_is_refused_and_the_loss_stays_reported(
    source: RedisSource, redis_server: RedisServer
) -> None:
    await source.mark_version(V, 1)
    await source.write(V, users([1, 2, 3]), 1)
    source.serving({"prof": 1})
    r = client(redis_server)
    lose(r, source)
    with pytest.raises(DataMissing, match=r"data version 1 is not in the store.*re-materialize"):
        await source.write(V, users([1]), 1, create=False)  # a push
    assert not await source.has_version(V, 1)  # its marker was not written back
    await eventually(lambda: "prof" in source.missing(), 10, "the probe reports the loss")
    [res] = await source.read([ViewQuery(V, [2, 3], [0], 1)])
    assert isinstance(res, Unavailable)  # the lost keys: never NOT_FOUND
    # a materialization's write (create, the default) and version 0 still create
    await source.write(V, users([5]), 0, create=False)
    assert await source.has_version(V, 0)
    r.close()


async def test_a_write_that_finds_its_version_starting_to_expire_gives_its_rows_the_ttl_and_is_refused(
    source: RedisSource, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    await source.mark_version(V, 1)
    r = client(redis_server)
    marker = f"fs:{source._project}:prof:v1"
    after_the_check(monkeypatch, source, lambda: r.expire(marker, 100))  # the materializer expires it
    with pytest.raises(Unavailable, match="replaced and is expiring"):
        await source.write(V, users([7, 8]), 1, create=False)
    for key in (f"{marker}:7", f"{marker}:8"):  # written, but expiring with the version
        assert 0 < r.pttl(key) <= 100_000, key
    r.close()


@pytest.mark.parametrize("create", [False, True], ids=["push", "materialization"])
async def test_a_version_redis_loses_during_a_write_is_not_brought_back_by_its_later_batches(
    source: RedisSource, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch, create: bool
) -> None:
    await source.mark_version(V, 1)
    r = client(redis_server)
    after_the_check(monkeypatch, source, lambda: lose(r, source))  # the write found the version
    with pytest.raises(DataMissing, match="re-materialize"):
        await source.write(V, users([7, 8]), 1, create=create)
    assert not await source._client.exists(f"fs:{source._project}:prof:v1")
    assert not r.exists(f"fs:{source._project}:prof:v1:7")  # the batch's rows were taken back out
    r.close()


async def test_a_version_a_cluster_loses_during_a_write_takes_the_batchs_rows_back_out(
    redis_cluster: RedisCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = RedisSource("c", f"p{uuid.uuid4().hex[:8]}", redis_options(redis_cluster.url, cluster=True))
    await source.start()
    pattern = f"fs:{source._project}:*"

    def keys() -> list[str]:
        return [k for n in redis_cluster.nodes for k in n.cli("--scan", "--pattern", pattern).split()]

    def lost() -> None:
        for node in redis_cluster.nodes:
            for key in node.cli("--scan", "--pattern", pattern).split():
                node.cli("DEL", key)

    try:
        await source.mark_version(V, 1)
        after_the_check(monkeypatch, source, lost)
        with pytest.raises(DataMissing):
            await source.write(V, users(list(range(1, 51))), 1, create=False)
        assert keys() == []  # neither the marker nor any of the batch's 50 rows
    finally:
        await source.close()


async def test_a_materialization_whose_version_redis_loses_between_its_writes_fails_and_publishes_nothing(
    redis_server: RedisServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry = FileRegistry(tmp_path / "reg", "p")
    await registry.publish(make_definitions("p", [U], [SCORES], []), expected_version=None)
    store = RedisSource("default", f"m{uuid.uuid4().hex[:8]}", redis_options(redis_server.url))
    await store.start()
    r = client(redis_server)
    written = 0
    write = store.write

    async def lost_after_the_first_batch(*args: Any, **kwargs: Any) -> int:
        nonlocal written
        n = await write(*args, **kwargs)
        written += n
        if written and n:  # Redis restarts empty between two of the run's writes
            lose(r, store)
        return n

    monkeypatch.setattr(store, "write", lost_after_the_first_batch)
    try:
        source = ParquetOfflineSource(str(write_source(tmp_path / "a.parquet", list(range(1, 3001)), 1)))
        with pytest.raises(DataMissing):
            await Materializer(registry, store).run("scores", source, batch_rows=1000)
        assert await registry.data_versions() == {}  # nothing published
        assert not list(r.scan_iter(match=f"fs:{store._project}:*"))  # nor left behind
    finally:
        await store.close()
        r.close()


async def test_expiring_a_version_gives_its_marker_a_ttl_before_its_rows(
    source: RedisSource, redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    await source.mark_version(V, 1)
    await source.write(V, users([1, 2]), 1)
    r = client(redis_server)
    marker = f"fs:{source._project}:prof:v1"
    seen: list[int] = []

    async def for_version_keys(*args: Any) -> int:
        seen.append(r.ttl(marker))  # pushes are refused from here on
        return await scan(*args)

    monkeypatch.setattr(redis_source, "for_version_keys", for_version_keys)
    assert await source.expire_version(V, 1, 100) == 2
    assert len(seen) == 1 and 0 < seen[0] <= 100
    assert 0 < r.ttl(f"{marker}:1") <= 100
    r.close()


async def test_a_closed_store_without_a_cache_refuses_a_write(redis_server: RedisServer) -> None:
    src = RedisSource("r", f"p{uuid.uuid4().hex[:8]}", redis_options(redis_server.url))
    await src.start()
    await src.close()
    with pytest.raises(Unavailable, match="is closed"):
        await src.write(V, users([1]), 0)
    r = client(redis_server)
    assert r.get(f"fs:{src._project}:prof:v0:1") is None
    r.close()


async def test_a_full_run_that_loads_no_row_publishes_an_empty_version_not_a_missing_one(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    registry = FileRegistry(tmp_path / "reg", "p")
    await registry.publish(make_definitions("p", [U], [SCORES], []), expected_version=None)
    store = RedisSource(
        "default", f"m{uuid.uuid4().hex[:8]}", redis_options(redis_server.url, health_interval_ms=50)
    )
    await store.start()
    try:
        source = ParquetOfflineSource(str(write_source(tmp_path / "a.parquet", [1, 2, 3], 1)))
        job = Materializer(registry, store, grace_seconds=60)
        assert (await job.run("scores", source)).data_version == 1
        after_all = EventTimeRange(start_us=TS0 + 10**12)  # a range no row is in
        result = await job.run("scores", source, span=after_all)
        assert (result.data_version, result.rows_written) == (2, 0)
        assert await store.has_version(SCORES, 2)
        store.serving({"scores": 2})
        [res] = await store.read([ViewQuery(SCORES, [1, 2], [0], 2)])
        assert isinstance(res, ViewRead) and res.found == [False, False]  # NOT_FOUND, not UNAVAILABLE
        await store._probe()
        assert store.missing() == {}
    finally:
        await store.close()
