"""The store path of benchmarks.redis_protocol against a real redis-server: it drives the
store's own read (``pooled_mget``) with what the store sends, so a change of that read's
interface must change the benchmark with it."""

from __future__ import annotations

import asyncio

from benchmarks.redis_protocol import join_keys, store
from featurestore.sources.redis_pool import LeanPool
from featurestore.sources.redis_read import pooled_mget
from featurestore.sources.redis_wire import pack_mget
from tests.servers import RedisServer


def test_the_store_path_of_the_redis_protocol_benchmark_reads_its_joins_through_the_stores_read(
    redis_server: RedisServer,
) -> None:
    assert asyncio.run(store(redis_server.url, 10, 4, 16)) > 0  # CPU seconds per join


def test_the_benchmarks_joins_read_both_views_with_their_markers_last(redis_server: RedisServer) -> None:
    async def read() -> list[list[bytes | None]]:
        pool = LeanPool(redis_server.url, 2)
        try:
            return await pooled_mget(pool, None, [(pack_mget(k), len(k)) for k in join_keys(3, 1)])
        finally:
            await pool.close()

    assert [len(values) for values in asyncio.run(read())] == [4, 4]  # 3 rows and the marker, per view
