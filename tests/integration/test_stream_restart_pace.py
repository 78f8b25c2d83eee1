"""A partition's recent event times (its pace, which decides how far an event may move
the watermark) are stored with its mark in Redis: a restarted processor judges a sparse
partition's late events as the one before it did (review s58: seeded from the stored
watermark alone, it moved the watermark again only at the 9th event, and took late events
meanwhile). Marks stored without them (before 2026-12-07) still read."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator

import pytest

from featurestore.streaming.processor import ProcessorOptions, StreamProcessor
from featurestore.streaming.redis_store import RedisTileStore
from featurestore.streaming.store import NO_MARK, PartitionMark, TileBatch
from featurestore.streaming.tiles import TileAccumulator, view_layout
from lineage.kafka import KafkaSettings
from tests.servers import RedisServer
from tests.support import REDIS_CONNECT_MS
from tests.unit.test_stream_processor import Message, view


@pytest.fixture
def store(redis_server: RedisServer) -> Iterator[RedisTileStore]:
    s = RedisTileStore(
        "default",
        f"p{uuid.uuid4().hex[:8]}",
        redis_server.url,
        socket_connect_timeout=REDIS_CONNECT_MS / 1000,
    )
    yield s
    s.close()


def started(store: RedisTileStore) -> StreamProcessor:
    """A processor given its partition 0 as assignment does: at the stored mark."""
    proc = StreamProcessor(view(), store, KafkaSettings(bootstrap_servers="unused"), "p", ProcessorOptions())
    proc.marks[0] = store.marks(proc.view, "clicks").get(0, NO_MARK)
    return proc


def turn_of(proc: StreamProcessor, events: list[int], write: bool) -> dict[str, int]:
    """One batch of events (ms; their Kafka timestamps the same) at the next offsets,
    written to the store as the processor does when ``write``; its counts."""
    first = proc.marks[0].offset + 1
    messages = [
        Message(first + i, json.dumps({"u": 1, "ts": ts}).encode(), ts) for i, ts in enumerate(events)
    ]
    acc = TileAccumulator(view_layout(proc.view), proc.decoder.column_attrs)
    turn = proc._aggregate(messages, acc)
    if write:
        proc._submit(turn, acc, threading.Event())
        proc._settle()
        assert proc._pending is not None and proc._pending[0].result()[0] is None  # applied
        proc._pending = None
    return dict(turn.counts)


def test_a_restarted_processor_judges_a_sparse_partitions_late_events_as_before(
    store: RedisTileStore,
) -> None:
    start = time.time_ns() // 1_000_000 - 4 * 3_600_000  # (in the past: not capped by the clock)
    before = started(store)
    try:
        for i in range(15):  # one event every 10 minutes, a batch each
            turn_of(before, [start + i * 600_000], write=True)
        last = start + 14 * 600_000
        after = started(store)  # a restart: a new processor from the stored mark
        try:
            # the next event, 10 minutes on, moves the watermark; one 5 minutes older is late
            # (lateness 0) for the processor that went on, and for the restarted one too
            going_on = turn_of(before, [last + 600_000, last + 300_000], write=False)
            restarted = turn_of(after, [last + 600_000, last + 300_000], write=False)
            assert (going_on["applied"], going_on["late"]) == (1, 1)
            assert (restarted["applied"], restarted["late"]) == (1, 1)
        finally:
            after._writer.shutdown()
    finally:
        before._writer.shutdown()


def test_marks_stored_without_their_recent_times_still_read_and_older_readers_read_new_ones(
    store: RedisTileStore,
) -> None:
    view_ = view()
    key = store._prefix(view_) + "marks"
    batch = TileBatch("clicks", {0: (-1, PartitionMark(5, 1_000, (900, 950, 1_000)))}, {}, 0)
    assert store.apply(view_, batch) is None
    assert store.marks(view_, "clicks") == {0: PartitionMark(5, 1_000, (900, 950, 1_000))}
    # an older processor reads "topic:partition" fields of two numbers (the other field's
    # name is no such field: a Kafka topic name has no ':'), and writes that field alone
    fields = {f.decode(): v.decode() for f, v in store.client.hgetall(key).items()}  # type: ignore[union-attr]
    assert fields["clicks:0"] == "5 1000" and sorted(f.rpartition(":")[0] for f in fields) == [
        "clicks",
        "clicks:0",
    ]
    store.client.hset(key, "clicks:0", "9 2000")
    assert store.marks(view_, "clicks") == {0: PartitionMark(9, 2_000)}  # the times were another mark's
