"""A partition handed back to a processor that owned it before, whose mark another
processor moved meanwhile: the watermarks librdkafka cached for it are its last fetch's
of the earlier assignment (librdkafka sets them when the partition object is made and on
each fetch's answer, never on an assignment), behind the stored mark. Unit-level with a
consumer that keeps such a cache: the real case needs two processors swapping one
partition back and forth on a real broker, whose rebalances decide who gets it
(tests/integration/test_stream_resilience.py has the real-broker reset test)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client import REGISTRY

from featurestore.streaming.processor import ProcessorOptions, StreamProcessor
from featurestore.streaming.store import NO_MARK, MemoryTileStore, PartitionMark, TileBatch
from lineage.kafka import KafkaSettings
from tests.unit.test_stream_processor import Message, view

INVALID = -1001  # librdkafka's RD_KAFKA_OFFSET_INVALID: no fetch back since the object was made


class CachingConsumer:
    """What the processor calls of a confluent_kafka.Consumer (which needs a broker), with
    librdkafka's per-partition watermark cache: ``cached`` (the fetches') and ``queried``
    (the broker's ListOffsets answer; Tansu's: the first offset of the last batch + 1)."""

    def __init__(self, cached: tuple[int, int], queried: tuple[int, int]) -> None:
        self.cached = {0: cached}
        self.queried = {0: queried}
        self.batches: list[list[Any]] = []
        self.seeks: list[tuple[int, int]] = []

    def assign(self, partitions: list[Any]) -> None:
        pass  # as librdkafka: the partition objects, and their cached watermarks, stay

    def get_watermark_offsets(
        self, tp: Any, timeout: float | None = None, cached: bool = False
    ) -> tuple[int, int]:
        return (self.cached if cached else self.queried).get(tp.partition, (INVALID, INVALID))

    def consume(self, num_messages: int, timeout: float) -> list[Any]:
        return self.batches.pop(0) if self.batches else []

    def seek(self, tp: Any) -> None:
        self.seeks.append((tp.partition, tp.offset))

    def commit(self, offsets: list[Any], asynchronous: bool) -> None:
        pass


def resets() -> float:
    return (
        REGISTRY.get_sample_value("featurestore_stream_partition_resets_total", {"view": "unit_view"}) or 0.0
    )


@pytest.fixture
def handed_back() -> Iterator[tuple[StreamProcessor, MemoryTileStore, CachingConsumer]]:
    """Partition 0 handed back: this consumer's cache says it ended at 10 (its last fetch
    when it owned it before), another processor has applied it up to offset 14 since (its
    true end is 15), and the broker's ListOffsets answers 12 (Tansu: behind the end)."""
    store = MemoryTileStore()
    store.apply(view(), TileBatch("clicks", {0: (NO_MARK.offset, PartitionMark(14, 0))}, {}, 0))
    consumer = CachingConsumer(cached=(0, 10), queried=(0, 12))
    options = ProcessorOptions(lag_interval_seconds=0)
    proc = StreamProcessor(view(), store, KafkaSettings(bootstrap_servers="unused"), "p", options)
    proc._consumer = consumer
    from confluent_kafka import TopicPartition

    proc._on_assign(consumer, [TopicPartition("clicks", 0)])
    yield proc, store, consumer
    proc._writer.shutdown()


def test_a_partition_handed_back_is_not_reset_on_the_watermark_its_earlier_assignment_cached(
    handed_back: tuple[StreamProcessor, MemoryTileStore, CachingConsumer],
) -> None:
    proc, store, consumer = handed_back
    before = resets()
    stop = threading.Event()
    for _ in range(3):
        proc.turn(stop)
    assert (resets(), consumer.seeks, store.marks(proc.view, "clicks")[0].offset) == (before, [], 14)
    consumer.cached[0] = (0, 15)  # its first fetch since the assignment is back: the true end
    proc.turn(stop)
    assert (resets(), consumer.seeks, proc._partitions.unverified) == (before, [], set())


def test_a_partition_handed_back_whose_topic_was_created_again_meanwhile_is_still_reset(
    handed_back: tuple[StreamProcessor, MemoryTileStore, CachingConsumer],
) -> None:
    from confluent_kafka import OFFSET_BEGINNING

    proc, store, consumer = handed_back
    before = resets()
    stop = threading.Event()
    proc.turn(stop)
    consumer.cached[0] = consumer.queried[0] = (0, 5)  # the fetch since: the new topic ends at 5
    proc.turn(stop)
    assert (resets(), consumer.seeks) == (before + 1, [(0, OFFSET_BEGINNING)])
    assert store.marks(proc.view, "clicks").get(0, NO_MARK) == NO_MARK


def test_a_message_since_the_assignment_makes_an_unchanged_cached_watermark_trusted(
    handed_back: tuple[StreamProcessor, MemoryTileStore, CachingConsumer],
) -> None:
    """Kafka restarts a consumer whose offset is past the end at the partition's start:
    the new topic's messages come (duplicates under the mark) while its end happens to be
    the old cached one."""
    from confluent_kafka import OFFSET_BEGINNING

    proc, _store, consumer = handed_back
    before = resets()
    stop = threading.Event()
    proc.turn(stop)
    assert resets() == before
    consumer.queried[0] = (0, 10)
    consumer.batches.append([Message(0, b"{}")])
    proc.turn(stop)
    assert (resets(), consumer.seeks) == (before + 1, [(0, OFFSET_BEGINNING)])
