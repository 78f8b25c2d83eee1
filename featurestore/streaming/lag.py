"""A stream processor's lag: ``featurestore_stream_lag_messages`` and ``_seconds``.

Messages: per assigned partition, its high watermark minus the next offset to apply.
The high watermark is the one the consumer's fetches report (confluent-kafka's cached
watermark: a local read, no request on the consume thread), asked of the broker only
for a partition no fetch has come back for yet (just assigned, or not assigned yet
while the processor waits for Redis to read its marks).

Seconds, while messages wait: the age of the newest message applied. Before this
processor has applied one (a restart): the newest event time its partitions' stored
marks hold; with no mark either (a view's first run): the Kafka time of the first
message it consumed; before it consumed any: how long it has seen messages waiting, a
lower bound. So a processor that restarts into a crash, or waits for Redis from its
start, reports a lag that grows with the clock instead of 0.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from typing import Any

from featurestore.streaming import metrics
from featurestore.streaming.store import PartitionMark

log = logging.getLogger(__name__)
UNKNOWN = -1  # a partition's position when it is read from its start


class LagMeter:
    """One processor's lag figures (its consume thread only)."""

    def __init__(self, view: str, topic: str, interval_seconds: float) -> None:
        self.view = view
        self.topic = topic
        self.interval = interval_seconds
        self.newest_applied_ms = 0  # Kafka time of the newest message applied, or a stored watermark's
        self.first_consumed_ms = 0  # Kafka time of the first message consumed, while none is applied
        self._waiting_since = 0.0  # wall clock: messages seen waiting, nothing else known
        self._last = 0.0

    def due(self) -> bool:
        return time.monotonic() - self._last >= self.interval

    def soon(self) -> None:
        """Measure at the next chance (partitions were just assigned)."""
        self._last = 0.0

    def assigned(self, marks: Iterable[PartitionMark]) -> None:
        """Before anything is applied: the newest event time the stored marks hold."""
        if not self.newest_applied_ms:
            self.newest_applied_ms = max((m.watermark_us // 1000 for m in marks if m.offset >= 0), default=0)

    def consumed(self, first_ms: int) -> None:
        if not self.first_consumed_ms:
            self.first_consumed_ms = first_ms

    def applied(self, last_ms: int) -> None:
        self.newest_applied_ms = max(self.newest_applied_ms, last_ms)

    def measure(self, consumer: Any, positions: Mapping[int, int]) -> None:
        """``positions``: per partition, the next offset to apply (``UNKNOWN``: from its start)."""
        self._last = time.monotonic()
        total = 0
        for p, nxt in positions.items():
            low, high = self._watermarks(consumer, p, nxt)
            if high < 0:
                continue
            total += max(0, high - (nxt if nxt >= 0 else max(low, 0)))
        metrics.LAG_MESSAGES.labels(self.view).set(total)
        now = time.time()
        if not total:
            age, self._waiting_since = 0.0, 0.0
        elif self.newest_applied_ms or self.first_consumed_ms:
            age = now - (self.newest_applied_ms or self.first_consumed_ms) / 1000
        else:
            self._waiting_since = self._waiting_since or now
            age = now - self._waiting_since
        metrics.LAG_SECONDS.labels(self.view).set(max(0.0, age))

    def _watermarks(self, consumer: Any, partition: int, nxt: int) -> tuple[int, int]:
        """(low, high): the fetches' (a local read); the broker's when those do not say
        enough (no fetch back yet, or the low one of a partition read from its start)."""
        from confluent_kafka import TopicPartition

        tp = TopicPartition(self.topic, partition)
        got = consumer.get_watermark_offsets(tp, cached=True)
        low, high = (-1, -1) if got is None else got
        if high >= 0 and (nxt >= 0 or low >= 0):
            return low, high
        try:  # rare: until the partition's first fetch is back
            got = consumer.get_watermark_offsets(tp, timeout=1)
        except Exception as e:  # the broker is slow: left out of this figure
            log.debug("stream view %s: watermark offsets of %s: %s", self.view, partition, e)
            return -1, -1
        return (-1, -1) if got is None else (int(got[0]), int(got[1]))


def committed(consumer: Any, topic: str, partitions: list[int]) -> dict[int, int]:
    """Kafka's committed offsets of ``partitions`` (the processor commits after each
    write: its stored marks + 1, as lag tools see them); ``UNKNOWN`` where none is."""
    from confluent_kafka import TopicPartition

    try:
        got = consumer.committed([TopicPartition(topic, p) for p in partitions], timeout=5)
    except Exception as e:  # the broker is slow too: from their start
        log.debug("%s: committed offsets: %s", topic, e)
        return dict.fromkeys(partitions, UNKNOWN)
    return {tp.partition: tp.offset if tp.offset >= 0 else UNKNOWN for tp in got}
