"""Adapter factories for the contract suites. A new adapter adds itself here."""

from __future__ import annotations

import uuid
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from featurestore.bypass import CacheBypass
from featurestore.cache import CachedSource, LRUCache
from featurestore.offline import ClickHouseOfflineSource, OfflineSource, ParquetOfflineSource
from featurestore.registry.base import Registry
from featurestore.registry.etcd import EtcdRegistry
from featurestore.registry.file import FileRegistry
from featurestore.sources.base import OnlineSource
from featurestore.sources.clickhouse import ClickHouseOnlineSource, ClickHouseOptions
from featurestore.sources.memory import MemorySource
from featurestore.sources.redis import RedisOptions, RedisSource
from featurestore.streaming.redis_store import RedisTileStore
from featurestore.streaming.store import MemoryTileStore, TileStore
from tests.support import REDIS_CONNECT_MS

# The contract is not about connect timeouts: on a loaded 2-core machine (two test
# workers, their servers) a localhost connect can wait past the 250 ms default for the
# event loop to run again, and a suite failed so once (2026-12-06 23:35, "Timeout
# connecting" in test_several_views_in_one_read[redis]; its file passed 3 of 3 alone).
CONNECT_MS = REDIS_CONNECT_MS


def redis_options(url: str, **more: Any) -> RedisOptions:
    """The contract's Redis options for ``url``: 8 connections, ``CONNECT_MS``, ``more``."""
    return RedisOptions(url=url, pool_size=8, connect_timeout_ms=CONNECT_MS, **more)


ADAPTERS = [
    "memory",
    "redis",
    "redis-no-autopipeline",
    "redis-unix",
    "redis-unix-no-autopipeline",
    "redis-cluster",
    "redis+lru",
    "redis+lru+bypass",
    "clickhouse",
]


async def make_source(name: str, request: pytest.FixtureRequest) -> OnlineSource:
    # Each test gets its own project, hence its own key space on the shared server.
    project = f"t{uuid.uuid4().hex[:10]}"
    if name == "memory":
        return MemorySource("contract")
    if name == "redis":
        server = request.getfixturevalue("redis_server")
        return RedisSource("contract", project, redis_options(server.url))
    if name == "redis-no-autopipeline":  # each join's MGETs on its own connection (the default coalesces)
        server = request.getfixturevalue("redis_server")
        return RedisSource("contract", project, redis_options(server.url, auto_pipeline=False))
    if name in ("redis-unix", "redis-unix-no-autopipeline"):  # unix:// (no TCP options)
        server = request.getfixturevalue("redis_server")
        auto = name == "redis-unix"
        return RedisSource("contract", project, redis_options(server.unix_url, auto_pipeline=auto))
    if name == "redis+lru":  # the LRU cache in front must not change any answer
        server = request.getfixturevalue("redis_server")
        return CachedSource(RedisSource("contract", project, redis_options(server.url)), LRUCache(1000, 30))
    if name == "redis+lru+bypass":  # nor must reads that go past it (here: every read)
        server = request.getfixturevalue("redis_server")
        return CachedSource(
            RedisSource("contract", project, redis_options(server.url)),
            LRUCache(1000, 30),
            CacheBypass(30, trial_every=1e9, unmeasured=0.0),
        )
    if name == "clickhouse":
        dsn = request.getfixturevalue("chdb_dsn")
        return ClickHouseOnlineSource("contract", project, ClickHouseOptions(dsn=dsn, threads=2))
    if name == "redis-cluster":
        cluster = request.getfixturevalue("redis_cluster")
        return RedisSource("contract", project, redis_options(cluster.url, cluster=True))
    raise ValueError(name)


REGISTRIES = ["file", "etcd"]


class RegistryFactory:
    """Creates independent clients of one registry backend (fresh per test)."""

    def __init__(self, name: str, request: pytest.FixtureRequest) -> None:
        self.name = name
        self.request = request
        self.tmp = request.getfixturevalue("tmp_path")

        # etcd is shared by the session: every test gets its own project prefix
        self.suffix = uuid.uuid4().hex[:8]

    def client(self, project: str = "contract") -> Registry:
        if self.name == "file":
            return FileRegistry(self.tmp / "registry", project, poll_interval=0.05)
        if self.name == "etcd":
            server = self.request.getfixturevalue("etcd_server")
            return EtcdRegistry([server.endpoint], f"{project}{self.suffix}")
        raise ValueError(self.name)

    async def snapshot_by_hand(self, version: int, value: bytes | None, project: str = "contract") -> None:
        """What an operator does behind the registry's back (etcdctl put / del, editing
        or deleting a file): write ``value`` as snapshot ``version`` (None: delete it)."""
        if self.name == "file":
            target = self.tmp / "registry" / project / "registry" / "snapshots" / f"{version}.json"
            if value is None:
                target.unlink()
            else:
                target.write_bytes(value)
            return
        import aetcd

        server = self.request.getfixturevalue("etcd_server")
        host, port = server.endpoint.removeprefix("http://").rsplit(":", 1)
        key = f"/featurestore/{project}{self.suffix}/registry/snapshots/{version}".encode()
        async with aetcd.Client(host=host, port=int(port)) as client:
            if value is None:
                assert await client.delete(key) is not None
            else:
                await client.put(key, value)

    async def put_by_hand(self, relative: str, value: bytes, project: str = "contract") -> None:
        """Write ``value`` at ``relative`` under the project (``canary/svc``,
        ``registry/snapshots/1.bak``): an etcd key, or a file, written by hand."""
        if self.name == "file":
            target = self.tmp / "registry" / project / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(value)
            return
        import aetcd

        server = self.request.getfixturevalue("etcd_server")
        host, port = server.endpoint.removeprefix("http://").rsplit(":", 1)
        async with aetcd.Client(host=host, port=int(port)) as client:
            await client.put(f"/featurestore/{project}{self.suffix}/{relative}".encode(), value)

    def where(self, relative: str, project: str = "contract") -> str:
        """The etcd key, or the file, of ``relative`` under the project (as errors name it)."""
        if self.name == "file":
            return str(self.tmp / "registry" / project / relative)
        return f"/featurestore/{project}{self.suffix}/{relative}"

    async def read_by_hand(self, relative: str, project: str = "contract") -> bytes | None:
        """What is stored at ``relative`` under the project (an etcd key or a file),
        None when nothing is."""
        if self.name == "file":
            target = self.tmp / "registry" / project / relative
            return target.read_bytes() if target.exists() else None
        import aetcd

        server = self.request.getfixturevalue("etcd_server")
        host, port = server.endpoint.removeprefix("http://").rsplit(":", 1)
        async with aetcd.Client(host=host, port=int(port)) as client:
            kv = await client.get(f"/featurestore/{project}{self.suffix}/{relative}".encode())
            return None if kv is None else bytes(kv.value)


OFFLINE_SOURCES = ["parquet-file", "parquet-dir", "parquet-hive", "clickhouse"]


def make_offline_source(name: str, request: pytest.FixtureRequest, table: pa.Table) -> OfflineSource:
    """``table`` (user_id, score, tag, event_timestamp: timestamp[us, UTC]) stored the way
    the adapter reads it."""
    tmp = request.getfixturevalue("tmp_path")
    if name == "parquet-file":
        pq.write_table(table, tmp / "rows.parquet")
        return ParquetOfflineSource(str(tmp / "rows.parquet"))
    if name == "parquet-dir":  # rows dealt round-robin into parts: a key's rows span files
        (tmp / "parts").mkdir()
        for part in range(3):
            pq.write_table(
                table.take(list(range(part, table.num_rows, 3))), tmp / "parts" / f"part-{part}.parquet"
            )
        (tmp / "parts" / "_SUCCESS").write_text("")  # what Spark leaves: not a Parquet file
        return ParquetOfflineSource(str(tmp / "parts"))
    if name == "parquet-hive":  # day=YYYY-MM-DD/ directories
        days = pc.strftime(table.column("event_timestamp"), format="%Y-%m-%d")
        ds.write_dataset(
            table.append_column("day", days),
            tmp / "hive",
            format="parquet",
            partitioning=ds.partitioning(pa.schema([("day", pa.string())]), flavor="hive"),
        )
        return ParquetOfflineSource(str(tmp / "hive"))
    if name == "clickhouse":
        import clickhouse_connect

        dsn = request.getfixturevalue("chdb_dsn")
        db = f"wh{uuid.uuid4().hex[:10]}"
        client = clickhouse_connect.get_client(dsn=ClickHouseOptions(dsn=dsn).client_dsn)
        client.command(f"CREATE DATABASE {db}")
        client.command(
            f"CREATE TABLE {db}.rows (user_id Int64, score Int64, tag String, "
            "event_timestamp DateTime64(6, 'UTC')) ENGINE = MergeTree ORDER BY user_id"
        )
        client.insert_arrow(f"{db}.rows", table)
        return ClickHouseOfflineSource(dsn, f"{db}.rows")
    raise ValueError(name)


TILE_STORES = ["memory", "redis", "redis-unix"]


def make_tile_store(name: str, request: pytest.FixtureRequest) -> TileStore:
    project = f"t{uuid.uuid4().hex[:10]}"
    if name == "memory":
        return MemoryTileStore("contract")
    if name == "redis":
        server = request.getfixturevalue("redis_server")
        return RedisTileStore("contract", project, server.url, socket_connect_timeout=CONNECT_MS / 1000)
    if name == "redis-unix":
        server = request.getfixturevalue("redis_server")
        return RedisTileStore("contract", project, server.unix_url, socket_connect_timeout=CONNECT_MS / 1000)
    raise ValueError(name)
