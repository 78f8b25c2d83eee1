"""An idle key's tiles expire after the longest window + a tile + the lateness + 60 s of
clock skew (a processor's clock ahead of the servers'), and as many tiles more as its
newest tile is ahead of the writer's clock: an event from a clock ahead is served once
its time comes (the Redis adapter: test_stream_faults.py, test_tile_store_redis.py)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from featurestore.definitions.parser import parse_definitions
from featurestore.streaming import store as store_module
from featurestore.streaming.store import MemoryTileStore, PartitionMark, TileBatch, expiry_ms, ttl_seconds
from featurestore.streaming.tiles import TileAccumulator, view_layout

NOW_TILE = 29_000_000  # minutes


def test_a_keys_time_to_live_grows_by_how_far_ahead_its_newest_tile_is() -> None:
    assert expiry_ms(3_600_000, 60_000, NOW_TILE, NOW_TILE) == 3_600_000
    assert expiry_ms(3_600_000, 60_000, NOW_TILE - 5, NOW_TILE) == 3_600_000
    assert expiry_ms(3_600_000, 60_000, NOW_TILE + 30, NOW_TILE) == 3_600_000 + 30 * 60_000


def test_the_memory_store_keeps_a_key_ahead_until_its_tile_is_served(monkeypatch: pytest.MonkeyPatch) -> None:
    doc = {
        "project": "p",
        "entities": [{"name": "user_id", "dtype": "int64"}],
        "stream_views": [
            {
                "name": "expiry_view",  # 1-minute tiles, a 1-hour window: idle for 61 minutes
                "entities": ["user_id"],
                "source": {"topic": "t", "key_fields": ["u"], "timestamp_field": "ts"},
                "aggregations": [{"name": "n", "function": "count", "window": "1h"}],
            }
        ],
    }
    view = parse_definitions(doc, source="expiry.yaml").views["expiry_view"]
    layout = view_layout(view)
    clock = [1000.0]
    monkeypatch.setattr(store_module, "time", SimpleNamespace(monotonic=lambda: clock[0]))
    tiles = MemoryTileStore()
    acc = TileAccumulator(layout)
    acc.add("now", NOW_TILE * layout.tile_us, {})
    acc.add("ahead", (NOW_TILE + 30) * layout.tile_us, {})  # half an hour ahead
    batch = TileBatch("t", {0: (-1, PartitionMark(1, NOW_TILE * layout.tile_us))}, acc.records, NOW_TILE)
    assert tiles.apply(view, batch) is None
    clock[0] += ttl_seconds(view) + 1
    now, ahead = asyncio.run(tiles.read(view, ["now", "ahead"]))
    assert now is None and ahead is not None
    clock[0] += 30 * 60
    assert asyncio.run(tiles.read(view, ["ahead"])) == [None]


def test_the_memory_store_keeps_a_key_from_a_processor_a_minute_ahead_while_servers_read_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from tests.contract.test_tile_store import SKEW_VIEW

    layout = view_layout(SKEW_VIEW)  # 10 s tiles, a 5-minute longest window (30 tiles)
    clock = [1000.0]
    monkeypatch.setattr(store_module, "time", SimpleNamespace(monotonic=lambda: clock[0]))
    server_us = NOW_TILE * 60_000_000 + 5_000_000
    event_us = processor_us = server_us + 60_000_000  # the producer's and the processor's clock
    acc = TileAccumulator(layout)
    acc.add("1", event_us, {"amount": 1.0})
    tiles = MemoryTileStore()
    batch = TileBatch("t", {0: (-1, PartitionMark(0, event_us))}, acc.records, processor_us // layout.tile_us)
    assert tiles.apply(SKEW_VIEW, batch) is None
    # a server reads the event's tile in its 5-minute window until 30 tiles after its start
    served_until_us = (event_us // layout.tile_us + 30) * layout.tile_us
    clock[0] += (served_until_us - server_us) / 1e6 - 1
    assert asyncio.run(tiles.read(SKEW_VIEW, ["1"])) != [None]
