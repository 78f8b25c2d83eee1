"""The Redis tile store's write script beyond the TileStore contract: it refuses a batch
it could only apply in part before writing anything (Redis keeps a failed script's
writes), and a batch costs what it writes, not what the keys hold (a key's records are
merged in place: no key is rewritten whole while it holds records windows still reach)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from redis import Redis
from redis.exceptions import ResponseError

from featurestore.streaming.redis_store import RedisTileStore
from featurestore.streaming.retry import transient
from featurestore.streaming.store import Eviction, PartitionMark, TileBatch, kept_tiles
from featurestore.streaming.tiles import TileAccumulator, view_layout
from tests.contract.test_tile_store import LONG, NOW_TILE, TILE_US, VIEW, records, unpacked
from tests.servers import RedisServer
from tests.support import REDIS_CONNECT_MS

CONNECT_S = REDIS_CONNECT_MS / 1000


@pytest.fixture
def store(redis_server: RedisServer) -> Iterator[RedisTileStore]:
    s = RedisTileStore("t", f"p{uuid.uuid4().hex[:8]}", redis_server.url, socket_connect_timeout=CONNECT_S)
    yield s
    s.close()


def one_event_each(keys: list[str], tile: int, offset: int) -> TileBatch:
    acc = TileAccumulator(view_layout(VIEW))
    for key in keys:
        acc.add(key, tile * TILE_US, {"amount": 1.0})
    return TileBatch(
        "clicks", {0: (offset - 1, PartitionMark(offset, tile * TILE_US))}, acc.records, NOW_TILE
    )


@pytest.mark.parametrize("bad", ["hash", "short string"])
async def test_a_batch_with_a_key_that_holds_no_records_is_refused_before_anything_is_written(
    store: RedisTileStore, bad: str
) -> None:
    assert store.apply(VIEW, one_event_each(["1"], NOW_TILE, 0)) is None
    key2 = store._prefix(VIEW) + "k:2"
    if bad == "hash":
        store.client.hset(key2, "x", "y")
    else:
        store.client.set(key2, b"12345")
    with pytest.raises(ResponseError) as e:
        store.apply(VIEW, one_event_each(["1", "2", "3"], NOW_TILE, 1))
    assert key2 in str(e.value)
    assert not transient(e.value)  # the processor stops (a key it cannot write is no outage)
    assert store.marks(VIEW, "clicks") == {0: PartitionMark(0, NOW_TILE * TILE_US)}  # not moved
    got = await store.read(VIEW, ["1", "3"])
    assert records(got[0])[NOW_TILE][view_layout(VIEW).ops.index("c")] == 1.0  # key 1: its first event only
    assert got[1] is None  # key 3: not written


def command_calls(client: Redis, command: str) -> int:
    stats = client.info("commandstats").get(f"cmdstat_{command}", {})
    return int(stats.get("calls", 0))


async def test_a_batch_into_a_key_of_many_tiles_merges_in_place(store: RedisTileStore) -> None:
    layout = view_layout(LONG)
    acc = TileAccumulator(layout)
    for t in range(NOW_TILE - 179, NOW_TILE + 1):  # 180 tiles: the 3-hour window's
        acc.add("1", t * TILE_US, {"amount": 1.0})
    first = TileBatch("clicks", {0: (-1, PartitionMark(0, NOW_TILE * TILE_US))}, acc.records, NOW_TILE)
    assert store.apply(LONG, first) is None
    sets, ranges = command_calls(store.client, "set"), command_calls(store.client, "setrange")
    for n, (tile, amount) in enumerate([(NOW_TILE, 2.0), (NOW_TILE + 1, 3.0), (NOW_TILE - 100, 4.0)]):
        acc = TileAccumulator(layout)
        acc.add("1", tile * TILE_US + 1, {"amount": amount})
        batch = TileBatch("clicks", {0: (n, PartitionMark(n + 1, tile * TILE_US))}, acc.records, NOW_TILE + 1)
        assert store.apply(LONG, batch) is None
    # the newest tile merged, a new one appended, a late event merged into an old one: in place
    assert command_calls(store.client, "set") == sets
    assert command_calls(store.client, "setrange") == ranges + 3
    tiles = unpacked(LONG, (await store.read(LONG, ["1"]))[0])
    total = layout.ops.index("a")
    assert (tiles[NOW_TILE][total], tiles[NOW_TILE + 1][total], tiles[NOW_TILE - 100][total]) == (
        3.0,
        3.0,
        5.0,
    )
    assert list(tiles) == sorted(tiles) and len(tiles) == 181  # (the oldest is no longer reached)


def test_the_eviction_settings_are_read_from_redis(own_redis: RedisServer) -> None:
    store = RedisTileStore("t", "p", own_redis.url, socket_connect_timeout=CONNECT_S)
    try:
        assert store.eviction() == Eviction("noeviction", 0)  # Redis's defaults
        store.client.config_set("maxmemory-policy", "volatile-lru")
        store.client.config_set("maxmemory", "100mb")
        assert store.eviction() == Eviction("volatile-lru", 100 * 1024 * 1024)
    finally:
        store.close()


async def test_one_batch_rewrites_at_most_the_trim_budget_and_the_other_keys_trim_later(
    store: RedisTileStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    from featurestore.streaming import redis_store

    layout = view_layout(LONG)  # 181 tiles kept: a key past SMALL, trimmed at a quarter stale
    keys = ["1", "2", "3"]
    acc = TileAccumulator(layout)
    for key in keys:  # written every tile since the same start: they reach the threshold together
        for t in range(NOW_TILE - 180, NOW_TILE + 1):
            acc.add(key, t * TILE_US, {"amount": 1.0})
    assert (
        store.apply(LONG, TileBatch("clicks", {0: (-1, PartitionMark(0, 0))}, acc.records, NOW_TILE)) is None
    )
    monkeypatch.setattr(redis_store, "TRIM_BUDGET", 1)  # one key's rewrite spends it
    later = NOW_TILE + 60  # 58 of a key's 182 tiles no window (nor a minute of skew) reaches then: a quarter

    def stale_in(raw: bytes | None) -> int:
        return sum(t < later - kept_tiles(layout) for t in unpacked(LONG, raw))

    for offset, expect in ((1, [0, 58, 58]), (2, [0, 0, 58]), (3, [0, 0, 0])):
        acc = TileAccumulator(layout)
        for key in keys:
            acc.add(key, later * TILE_US + offset, {"amount": 1.0})
        marks = {0: (offset - 1, PartitionMark(offset, 0))}
        assert store.apply(LONG, TileBatch("clicks", marks, acc.records, later)) is None
        got = await store.read(LONG, keys)
        assert [stale_in(raw) for raw in got] == expect, offset
        total = layout.ops.index("a")
        assert all(unpacked(LONG, raw)[later][total] == offset for raw in got)  # every batch merged


def test_a_key_written_by_a_processor_a_minute_ahead_lives_until_the_servers_window_leaves_it(
    store: RedisTileStore,
) -> None:
    import time

    from tests.contract.test_tile_store import SKEW_VIEW

    layout = view_layout(SKEW_VIEW)  # 10 s tiles, a 5-minute longest window (30 tiles)
    server_us = time.time_ns() // 1000  # this host's clock: Redis's too
    event_us = processor_us = server_us + 60_000_000  # the producer's and the processor's clock
    acc = TileAccumulator(layout)
    acc.add("1", event_us, {"amount": 1.0})
    now_tile = processor_us // layout.tile_us
    marks = {0: (-1, PartitionMark(0, event_us))}
    assert store.apply(SKEW_VIEW, TileBatch("clicks", marks, acc.records, now_tile)) is None
    # the servers' 5-minute window reaches the event's tile until 30 tiles after its start
    served_until_ms = (event_us // layout.tile_us + 30) * layout.tile_us // 1000
    expires_ms = store.client.execute_command("PEXPIRETIME", store._prefix(SKEW_VIEW) + "k:1")  # type: ignore[no-untyped-call]
    assert expires_ms >= served_until_ms  # (the write came after server_us: a later expiry, never earlier)
