"""What a publication replaces goes, however the run before it ended (review s55,
findings 1 and 5): a run killed after publishing left the version it replaced, and its
orphans, without an expiry for good; rows pushed into version 0 before the first run
never expired. Real Redis and the embedded ClickHouse engine, the file registry."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import clickhouse_connect
import pyarrow as pa
import pytest

from featurestore.materialize import Materializer
from featurestore.model import DType, Entity, Feature, FeatureView, make_definitions
from featurestore.offline import ParquetOfflineSource
from featurestore.registry.file import FileRegistry
from featurestore.rows import view_schema
from featurestore.sources.clickhouse import ClickHouseOnlineSource, ClickHouseOptions, table_name
from featurestore.sources.redis import RedisOptions, RedisSource
from tests.integration.test_materialize import write_source
from tests.servers import RedisServer
from tests.support import REDIS_CONNECT_MS

U = Entity("user_id", DType.INT64)
V = FeatureView(
    "scores", (U,), (Feature("score", DType.INT64), Feature("tag", DType.STRING)), online_store="default"
)
TS0 = 1_704_067_200_000_000


def rows(ids: list[int], mark: int) -> pa.Table:
    return pa.table(
        {
            "user_id": ids,
            "score": [i * 10 + mark for i in ids],
            "tag": [f"v{mark}"] * len(ids),
            "event_timestamp": pa.array([TS0 + i for i in ids], pa.timestamp("us", tz="UTC")),
        },
        schema=view_schema(V),
    )


@pytest.fixture
async def redis_setup(
    redis_server: RedisServer, tmp_path: Path
) -> AsyncIterator[tuple[FileRegistry, RedisSource]]:
    registry = FileRegistry(tmp_path / "reg", "p")
    await registry.publish(make_definitions("p", [U], [V], []), expected_version=None)
    options = RedisOptions(url=redis_server.url, connect_timeout_ms=REDIS_CONNECT_MS)
    store = RedisSource("default", f"r{uuid.uuid4().hex[:8]}", options)
    await store.start()
    yield registry, store
    await store.close()


async def ttls(store: RedisSource, version: int) -> dict[str, int]:
    """The TTL of the version's marker, its profile and each of its rows (-1: none, -2: gone)."""
    client: Any = store._client
    marker = store.prefix("scores", version)[:-1]
    out = {"marker": await client.ttl(marker), "profile": await client.ttl("fsprofile" + marker[2:])}
    async for key in client.scan_iter(match=marker + ":*"):
        out[key.decode()] = await client.ttl(key)
    return out


async def killed_after_publishing(registry: FileRegistry, store: RedisSource, current: int) -> int:
    """What a run killed just after its compare-and-swap leaves: a new version, published,
    and the one it replaced never set to expire."""
    version = await registry.allocate_data_version("scores")
    await store.mark_version(V, version)
    await store.write(V, rows(list(range(1, 51)), version), version)
    await store.write_profile(V, version, b"profile")
    await registry.swap_data_version("scores", expected=current, new=version)
    return version


async def test_a_version_a_run_killed_after_publishing_left_expires_with_the_next_publication(
    redis_setup: tuple[FileRegistry, RedisSource], tmp_path: Path
) -> None:
    """The review's sequence: v1 published; a run killed mid-write (orphan v2); a run
    killed after publishing v3 over v1. The next run expires v1 and v2 as well as v3."""
    registry, store = redis_setup
    job = Materializer(registry, store, grace_seconds=60)
    source = ParquetOfflineSource(str(write_source(tmp_path / "a.parquet", list(range(1, 101)), 1)))
    assert (await job.run("scores", source)).data_version == 1
    orphan = await registry.allocate_data_version("scores")  # killed mid-write
    await store.write(V, rows(list(range(1, 31)), orphan), orphan)
    published = await killed_after_publishing(registry, store, current=1)
    assert (orphan, published) == (2, 3)
    assert set((await ttls(store, 1)).values()) == {-1}  # nothing of v1 would ever expire

    r = await job.run("scores", source)
    assert (r.data_version, r.previous_version, r.expiring) == (4, 3, (1, 2, 3))
    for version, keys in ((1, 100), (2, 30), (3, 50)):
        left = await ttls(store, version)
        profile = left.pop("profile")
        assert len(left) == keys + 1 and all(0 < t <= 60 for t in left.values())
        assert 0 < profile <= 60 if version != orphan else profile == -2  # (an orphan has none)
    again = await job.run("scores", source)  # what is expiring is not expired again
    assert again.expiring == (4,)


async def test_an_expiry_cut_short_is_finished_by_the_next_publication(
    redis_setup: tuple[FileRegistry, RedisSource], tmp_path: Path
) -> None:
    """Killed while it scanned the replaced version's rows: the marker has its TTL, some
    rows and the profile (given its TTL last) do not. The next publication finds the
    profile without one and expires the version again."""
    registry, store = redis_setup
    job = Materializer(registry, store, grace_seconds=60)
    source = ParquetOfflineSource(str(write_source(tmp_path / "a.parquet", list(range(1, 101)), 1)))
    await job.run("scores", source)
    await job.run("scores", source)
    client: Any = store._client
    marker = store.prefix("scores", 1)[:-1]
    for key in [f"{marker}:{i}" for i in range(1, 41)] + ["fsprofile" + marker[2:]]:
        assert await client.persist(key)  # the scan had not reached them
    assert (await ttls(store, 1))["marker"] > 0

    r = await job.run("scores", source)
    assert r.expiring == (1, 2)
    assert all(0 < t <= 60 for t in (await ttls(store, 1)).values())


async def test_rows_pushed_into_version_0_expire_when_the_first_materialization_replaces_it(
    redis_setup: tuple[FileRegistry, RedisSource], tmp_path: Path
) -> None:
    registry, store = redis_setup
    await store.write(V, rows([7, 8, 9], 0), 0, create=False)  # pushes before any run
    job = Materializer(registry, store, grace_seconds=60)
    source = ParquetOfflineSource(str(write_source(tmp_path / "a.parquet", list(range(1, 11)), 1)))
    first = await job.run("scores", source)
    pushed = await ttls(store, 0)
    assert pushed.pop("profile") == -2  # (pushes write none)
    assert len(pushed) == 4 and all(0 < t <= 60 for t in pushed.values())
    assert (first.data_version, first.expiring) == (1, (0,))
    assert (await job.run("scores", source)).expiring == (1,)


async def test_a_view_never_pushed_to_expires_nothing_at_its_first_publication(
    redis_setup: tuple[FileRegistry, RedisSource], tmp_path: Path
) -> None:
    registry, store = redis_setup
    source = ParquetOfflineSource(str(write_source(tmp_path / "a.parquet", list(range(1, 11)), 1)))
    assert (await Materializer(registry, store).run("scores", source)).expiring == ()


class CancelledAfterSwap(FileRegistry):
    """A run (``victim``) cancelled (the CLI's SIGTERM) the moment its publication lands."""

    victim: asyncio.Task[Any]

    async def swap_data_version(self, view: str, *, expected: int, new: int) -> None:
        await super().swap_data_version(view, expected=expected, new=new)
        self.victim.cancel()


async def test_a_run_cancelled_after_publishing_finishes_expiring_the_replaced_version_first(
    redis_setup: tuple[FileRegistry, RedisSource], tmp_path: Path
) -> None:
    registry, store = redis_setup
    source = ParquetOfflineSource(str(write_source(tmp_path / "a.parquet", list(range(1, 101)), 1)))
    await Materializer(registry, store).run("scores", source)
    cancelling = CancelledAfterSwap(tmp_path / "reg", "p")
    run = asyncio.create_task(Materializer(cancelling, store, grace_seconds=60).run("scores", source))
    cancelling.victim = run
    result = await run  # stopped while publishing: published, so it ends as a published run
    assert result.data_version == 2 and result.expiring == (1,)
    assert await registry.data_versions() == {"scores": 2}  # published
    assert all(0 < t <= 60 for t in (await ttls(store, 1)).values())  # and v1 set to expire


class CancelledMidBatch:
    """A source that cancels the task reading it as it hands over its second batch,
    within that task's step, as asyncio.run's SIGINT handler does when Ctrl-C lands
    while the run builds a batch: the cancel is due at the next await, redis-py's
    ``wait_for`` around the socket write, which on Python 3.11 returns normally
    instead (gh-86296)."""

    def __init__(self, source: ParquetOfflineSource) -> None:
        self.source = source

    def describe(self) -> str:
        return self.source.describe()

    async def count(self, timestamp: str, span: Any = None) -> int | None:
        return None

    async def latest_batches(self, *args: Any) -> AsyncIterator[pa.RecordBatch]:
        n = 0
        async for batch in self.source.latest_batches(*args):
            n += 1
            if n == 2:
                task = asyncio.current_task()
                assert task is not None
                task.cancel()
            yield batch


async def test_a_run_whose_cancellation_a_redis_write_swallowed_stops_before_publishing(
    redis_setup: tuple[FileRegistry, RedisSource], tmp_path: Path
) -> None:
    """The cancel was lost and the run published (review s57, cli finding 1: Ctrl-C on
    `featurestore materialize` published 1 run in 2)."""
    registry, store = redis_setup
    source = ParquetOfflineSource(str(write_source(tmp_path / "a.parquet", list(range(1, 5001)), 1)))
    run = asyncio.create_task(
        Materializer(registry, store).run("scores", CancelledMidBatch(source), batch_rows=1000)
    )
    with pytest.raises(asyncio.CancelledError):
        await run
    assert await registry.data_versions() == {}  # not published
    assert await ttls(store, 1) == {"marker": -2, "profile": -2}  # its rows dropped


# -- ClickHouse: a replaced version's table is recorded in __expiry, which upkeep drops


CV = FeatureView("scores", (U,), V.features, online_store="ch")


@pytest.fixture
async def ch_setup(
    chdb_dsn: str, tmp_path: Path
) -> AsyncIterator[tuple[FileRegistry, ClickHouseOnlineSource]]:
    registry = FileRegistry(tmp_path / "reg", "p")
    await registry.publish(make_definitions("p", [U], [CV], []), expected_version=None)
    store = ClickHouseOnlineSource("ch", f"t{uuid.uuid4().hex[:8]}", ClickHouseOptions(dsn=chdb_dsn))
    await store.start()
    await store.prepare([CV])  # a server's: the version-0 table
    yield registry, store
    await store.close()


def queued(store: ClickHouseOnlineSource, chdb_dsn: str) -> set[int]:
    """The versions of the view recorded for dropping."""
    client = clickhouse_connect.get_client(dsn=ClickHouseOptions(dsn=chdb_dsn).client_dsn)
    rows = client.query(f"SELECT `table` FROM `{store.options.database}`.`__expiry`").result_rows
    prefix = table_name(store._project, "scores", 0)[:-1]
    return {int(t[len(prefix) :]) for (t,) in rows if t.startswith(prefix)}


async def test_clickhouse_tables_a_run_killed_after_publishing_left_are_queued_for_dropping(
    ch_setup: tuple[FileRegistry, ClickHouseOnlineSource], chdb_dsn: str, tmp_path: Path
) -> None:
    registry, store = ch_setup
    job = Materializer(registry, store, grace_seconds=3600)
    source = ParquetOfflineSource(str(write_source(tmp_path / "a.parquet", list(range(1, 21)), 1)))
    await job.run("scores", source)  # v1 (v0's table is empty: left to the servers that made it)
    killed = await registry.allocate_data_version("scores")
    await store.mark_version(CV, killed)
    await store.write(CV, rows([1, 2], killed), killed)
    await registry.swap_data_version("scores", expected=1, new=killed)  # and no expiry of v1
    assert queued(store, chdb_dsn) == set()

    r = await job.run("scores", source)
    assert queued(store, chdb_dsn) == {1, 2}
    assert (r.data_version, r.expiring) == (3, (1, 2))
    assert (await job.run("scores", source)).expiring == (3,)  # a queued table is not queued again


async def test_clickhouse_version_0_with_pushed_rows_is_dropped_after_the_first_publication(
    ch_setup: tuple[FileRegistry, ClickHouseOnlineSource], chdb_dsn: str, tmp_path: Path
) -> None:
    registry, store = ch_setup
    await store.write(CV, rows([7, 8], 0), 0, create=False)  # pushes before any run
    job = Materializer(registry, store, grace_seconds=0)
    source = ParquetOfflineSource(str(write_source(tmp_path / "a.parquet", list(range(1, 21)), 1)))
    first = await job.run("scores", source)
    assert queued(store, chdb_dsn) == {0}
    assert first.expiring == (0,)
    await store.check()  # a health round drops what is due
    assert not await store.has_version(CV, 0)
    await store.prepare([CV])  # the next registry change: a server makes an empty v0 again
    assert await store.has_version(CV, 0)
    assert (await job.run("scores", source)).expiring == (1,)  # an empty v0 is left alone


class SlowPointer(FileRegistry):
    """A registry whose data-version swap lands 300 ms after it is asked for, on a thread
    (as the file registry writes): long enough to cancel the run in the middle of it."""

    swapping: asyncio.Event

    async def swap_data_version(self, view: str, *, expected: int, new: int) -> None:
        loop = asyncio.get_running_loop()

        def slow() -> None:
            import time

            loop.call_soon_threadsafe(self.swapping.set)  # the write is under way: cancel now
            time.sleep(0.3)
            self._swap_data_version(view, expected, new)

        await asyncio.to_thread(slow)


async def test_a_run_cancelled_while_its_pointer_is_written_keeps_the_version_published_and_cleans_up(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """SIGTERM during the publish (review s55 round 2, HIGH): the write landed after the
    cancel, the run had dropped its rows: the pointer named an empty version. Now the swap
    runs to its end and the run ends as published, its cleanup done."""
    registry = SlowPointer(tmp_path / "reg", "p")
    registry.swapping = asyncio.Event()
    await registry.publish(make_definitions("p", [U], [V], []), expected_version=None)
    store = RedisSource("default", f"r{uuid.uuid4().hex[:8]}", RedisOptions(url=redis_server.url))
    await store.start()
    try:
        job = Materializer(registry, store, grace_seconds=60)
        first = write_source(tmp_path / "first.parquet", [1, 2, 3], 1)
        registry.swapping = asyncio.Event()
        task = asyncio.create_task(job.run("scores", ParquetOfflineSource(str(first))))
        await registry.swapping.wait()
        await task  # version 1 published
        second = write_source(tmp_path / "second.parquet", [1, 2, 3, 4], 2)
        registry.swapping = asyncio.Event()
        task = asyncio.create_task(job.run("scores", ParquetOfflineSource(str(second))))
        await registry.swapping.wait()
        task.cancel()  # the pointer's write is under way
        result = await task  # published: it ends as a published run (review s55 round 3)
        assert result.data_version == 2
        await asyncio.sleep(0.5)  # a write still on its thread has landed by now
        assert (await registry.data_versions())["scores"] == 2
        assert await store.has_version(V, 2)
        assert len([k for k in await ttls(store, 2) if k.endswith((":1", ":4"))]) == 2  # its rows stay
        assert 0 < (await ttls(store, 1))["marker"] <= 60  # and what it replaced expires
    finally:
        await store.close()
