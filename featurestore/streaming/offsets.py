"""New partitions under old marks: a topic created again while Redis kept its offsets.

A stored mark (the last offset applied, ``store.py``) at or past the end of its
partition means the partition is not the one the mark was stored for: the topic was
deleted and created again, or a broker with memory storage restarted. Left alone, Kafka
answers the seek past the end with an offset reset to the partition's start, where
every message up to the old offset looks applied already (a ``duplicate``) and is
skipped; Tansu answers it with nothing, and the consumer waits past the end for good.

Two answers of the broker must both say the partition ends at or before the stored
offset: the high watermark its fetches report (confluent-kafka's cached watermark,
known once the first fetch of the partition came back) and its answer to a ListOffsets
query. Either alone can be wrong: Tansu answers ListOffsets with the first offset of the
last batch written + 1 (measured: 26 messages produced in batches of 20, 1 and 5 ->
22), and a Kafka partition's new leader can report a high watermark behind the one
consumers already read up to, until its followers catch up. The cached one is checked
for every assigned partition once it is known and then every lag interval (no request:
a local read); the query only when that one says so.

The cached watermarks are librdkafka's per partition object: set when the object is
made and by each fetch's answer, never on an assignment. A partition handed back to a
processor that owned it before still holds the figures of its last fetch then, while
another processor may have moved the mark past them since: stale, and on Tansu its
ListOffsets answer (behind the true end) would confirm them, resetting a healthy
partition. So the cached figures at the assignment are remembered, and trusted only
once a fetch since says something: they changed, or a message of the partition came.
A partition whose figures never change and that gets no message is not checked (an
idle one: nothing to skip or re-read yet).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

from featurestore.streaming.store import PartitionMark

log = logging.getLogger(__name__)
# The ListOffsets query of a suspect partition: a round trip to a broker that answered
# fetches a moment ago, tried this many times.
QUERY_SECONDS = 5.0
QUERY_ATTEMPTS = 3


def fetched_watermarks(consumer: Any, topic: str, partition: int) -> tuple[int, int]:
    """The (low, high) watermarks the partition's fetches reported, as librdkafka caches
    them; the high one negative while none came back (since the partition object was made)."""
    from confluent_kafka import TopicPartition

    got = consumer.get_watermark_offsets(TopicPartition(topic, partition), cached=True)
    return (-1, -1) if got is None else (int(got[0]), int(got[1]))


def queried_end(consumer: Any, topic: str, partition: int) -> int | None:
    """The high watermark the broker answers a ListOffsets query with; None when it does not."""
    from confluent_kafka import KafkaException, TopicPartition

    error: Exception | None = None
    for _ in range(QUERY_ATTEMPTS):
        try:
            got = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=QUERY_SECONDS)
        except KafkaException as e:
            got, error = None, e
        if got is not None:
            return int(got[1])
    log.warning("%s:%s: the broker did not say where the partition ends: %s", topic, partition, error)
    return None


class NewPartitions:
    """Which of a processor's assigned partitions are new under their stored marks (its
    consume thread only)."""

    def __init__(self, topic: str) -> None:
        self.topic = topic
        self.unverified: set[int] = set()  # assigned with a stored mark; no fetch back yet
        self.suspects: set[int] = set()  # their fetches say they end at or before the mark
        # assigned, no fetch known to be back since: the cached watermarks at the assignment
        self._at_assignment: dict[int, tuple[int, int]] = {}

    def assigned(self, consumer: Any, marks: Mapping[int, PartitionMark], partitions: Iterable[int]) -> None:
        """Just assigned (``consumer.assign`` done): what their cache holds now may be an
        earlier assignment's."""
        from confluent_kafka import KafkaException

        for p in partitions:
            try:
                self._at_assignment[p] = fetched_watermarks(consumer, self.topic, p)
            except KafkaException:  # no partition object: nothing cached to mistake
                self._at_assignment[p] = (-1, -1)
            if marks[p].offset >= 0:
                self.unverified.add(p)

    def fetched(self, partitions: Iterable[int]) -> None:
        """Messages of ``partitions`` came since their assignment: a fetch is back, the
        cached watermarks are its."""
        if self._at_assignment:
            for p in partitions:
                self._at_assignment.pop(p, None)

    def revoked(self, partitions: Iterable[int]) -> None:
        for p in partitions:
            self.unverified.discard(p)
            self.suspects.discard(p)
            self._at_assignment.pop(p, None)

    def look(self, consumer: Any, marks: Mapping[int, PartitionMark], partitions: Iterable[int]) -> None:
        """Suspects each of ``partitions`` whose fetches say it ends at or before its mark
        (a local read); one whose fetches said anything is verified either way."""
        for p in partitions:
            mark = marks.get(p)
            if mark is None or mark.offset < 0:
                self.unverified.discard(p)
                continue
            watermarks = fetched_watermarks(consumer, self.topic, p)
            end = watermarks[1]
            if end < 0 or self._at_assignment.get(p) == watermarks:
                continue  # no fetch back yet (since the assignment)
            self._at_assignment.pop(p, None)
            self.unverified.discard(p)
            if end <= mark.offset:
                self.suspects.add(p)

    def confirmed(self, consumer: Any, marks: Mapping[int, PartitionMark]) -> list[int]:
        """The suspects the broker's ListOffsets answer confirms; the suspicion ends."""
        out = []
        for p in sorted(self.suspects):
            mark = marks.get(p)
            if mark is None or mark.offset < 0:
                continue
            end = queried_end(consumer, self.topic, p)
            if end is not None and end <= mark.offset:
                out.append(p)
        self.suspects.clear()
        return out
