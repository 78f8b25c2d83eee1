"""The stream tile reader beside a Redis store fails fast when that Redis freezes: the
store's health probe is its circuit breaker (wired by factories.make_serving_stores)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from featurestore.config import Config, StoreConfig
from featurestore.definitions.stream import dtype_of
from featurestore.errors import Unavailable
from featurestore.factories import make_serving_stores
from featurestore.model import (
    STREAM_STORE_PREFIX,
    Aggregation,
    DType,
    Entity,
    Feature,
    FeatureView,
    StreamSpec,
)
from featurestore.model import StreamSource as KafkaSource
from featurestore.sources.base import SourceState, ViewQuery, ViewRead
from featurestore.streaming.store import PartitionMark, TileBatch
from featurestore.streaming.tiles import TileAccumulator, view_layout
from tests.servers import RedisServer
from tests.support import REDIS_CONNECT_MS, eventually

AGGS = (Aggregation("n", "count", "", 300),)
VIEW = FeatureView(
    "clicks",
    (Entity("user_id", DType.INT64),),
    tuple(Feature(a.name, dtype_of(a.function)) for a in AGGS),
    stream=StreamSpec(KafkaSource("clicks", ("user_id",)), AGGS, tile_seconds=60),
)


async def started_stores(server: RedisServer, **options: Any) -> tuple[Any, Any]:
    """The Redis store (health probe every 100 ms, no cache, ``options``) and its
    stream-tile reader."""
    config = Config(
        stores={
            "r": StoreConfig(
                kind="redis", options={"url": server.url, "health_interval_ms": 100, **options}, cache=False
            )
        }
    )
    stores = make_serving_stores(config)
    base, reader = stores["r"], stores[STREAM_STORE_PREFIX + "r"]
    await base.start()
    return base, reader


async def test_a_frozen_redis_makes_stream_reads_unavailable_at_once_and_they_recover(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "r").start()
    # the default connect timeout: it is the probe's socket timeout, DOWN must come within 5 s
    base, reader = await started_stores(server)
    now_us = time.time_ns() // 1000
    acc = TileAccumulator(view_layout(VIEW))
    acc.add("1", now_us, {})
    tiles = reader.tiles
    batch = TileBatch("clicks", {0: (-1, PartitionMark(0, now_us))}, acc.records, now_us // 60_000_000)
    assert tiles.apply(VIEW, batch) is None
    query = ViewQuery(VIEW, [1], [0], 0)
    try:
        [res] = await reader.read([query])
        assert isinstance(res, ViewRead) and res.columns == [[1]]
        server.pause()
        await eventually(lambda: base.state() is SourceState.DOWN, 5, "state DOWN")
        assert reader.state() is SourceState.DOWN
        # circuit open: answered from the store's state; without it this read waits on the
        # frozen server until the guard below gives up
        [res] = await asyncio.wait_for(reader.read([query]), 30)
        assert isinstance(res, Unavailable) and "is down" in res.message
        server.resume()
        await eventually(lambda: base.state() is SourceState.READY, 5, "state READY")
        [res] = await reader.read([query])
        assert isinstance(res, ViewRead) and res.columns == [[1]]
    finally:
        server.resume()
        await reader.close()
        await base.close()
        server.stop()


async def test_after_redis_restarts_the_first_stream_read_is_served_not_failed_on_a_dead_socket(
    tmp_path: Path,
) -> None:
    server = RedisServer(tmp_path / "r").start()
    base, reader = await started_stores(server, connect_timeout_ms=REDIS_CONNECT_MS)
    query = ViewQuery(VIEW, [1], [0], 0)
    try:
        [res] = await reader.read([query])  # a pooled connection, idle from now on
        assert isinstance(res, ViewRead) and res.found == [False]
        server.stop()
        await eventually(lambda: base.state() is SourceState.DOWN, 5, "state DOWN")
        [res] = await reader.read([query])
        assert isinstance(res, Unavailable)
        server.start()  # same port, fresh process: the idle socket is dead
        await eventually(lambda: base.state() is SourceState.READY, 5, "state READY")
        [res] = await reader.read([query])
        assert isinstance(res, ViewRead) and res.found == [False]
    finally:
        await reader.close()
        await base.close()
        server.stop()
