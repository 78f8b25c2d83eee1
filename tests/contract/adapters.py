"""Adapter factories for the contract suites. A new adapter adds itself here."""

from __future__ import annotations

import uuid

import pytest

from featurestore.cache import CachedSource, LRUCache
from featurestore.registry.base import Registry
from featurestore.registry.etcd import EtcdRegistry
from featurestore.registry.file import FileRegistry
from featurestore.sources.base import OnlineSource
from featurestore.sources.clickhouse import ClickHouseOnlineSource, ClickHouseOptions
from featurestore.sources.memory import MemorySource
from featurestore.sources.redis import RedisOptions, RedisSource

ADAPTERS = ["memory", "redis", "redis-cluster", "redis+lru", "clickhouse"]


async def make_source(name: str, request: pytest.FixtureRequest) -> OnlineSource:
    # Each test gets its own project, hence its own key space on the shared server.
    project = f"t{uuid.uuid4().hex[:10]}"
    if name == "memory":
        return MemorySource("contract")
    if name == "redis":
        server = request.getfixturevalue("redis_server")
        return RedisSource("contract", project, RedisOptions(url=server.url, pool_size=8))
    if name == "redis+lru":  # the LRU cache in front must not change any answer
        server = request.getfixturevalue("redis_server")
        return CachedSource(
            RedisSource("contract", project, RedisOptions(url=server.url, pool_size=8)), LRUCache(1000, 30)
        )
    if name == "clickhouse":
        dsn = request.getfixturevalue("chdb_dsn")
        return ClickHouseOnlineSource("contract", project, ClickHouseOptions(dsn=dsn, threads=2))
    if name == "redis-cluster":
        cluster = request.getfixturevalue("redis_cluster")
        return RedisSource("contract", project, RedisOptions(url=cluster.url, cluster=True, pool_size=8))
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
