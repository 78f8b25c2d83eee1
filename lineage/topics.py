"""The lineage topics as one client sees them: created when missing, and recognised when
the broker lost one.

A broker that loses a topic (its storage gone, or the topic deleted) comes back without
it, or with a topic of the same name that someone created again; either way the new
topic has a new topic id. The sink and the consumer each keep a ``TopicWatch`` and ask
it to ``check`` now and then: it creates what is missing (with the configured partitions
and replication) and says which topics are not the ones it saw before.
"""

from __future__ import annotations

import logging
from typing import Any

from lineage import metrics
from lineage.kafka import KafkaSettings, ensure_topic

log = logging.getLogger(__name__)


class TopicWatch:
    def __init__(self, settings: KafkaSettings, client: str, topics: dict[str, tuple[str, int]]) -> None:
        """``client``: sink or consumer; ``topics``: kind (events, dead_letters) -> (name,
        partitions). Both are the labels of featurestore_lineage_topic_lost_total."""
        self.settings = settings
        self.topics = topics
        self._lost = {kind: metrics.TOPIC_LOST.labels(client, kind) for kind in topics}  # 0, not absent
        self.ids: dict[str, str] = {}  # kind -> topic id when last seen ("" if the broker has none)
        self.ready = False  # every topic existed (or was created) at the last check
        self._admin: Any = None  # one AdminClient (a librdkafka instance), made on first use

    def check(self) -> list[str]:
        """Create the missing topics; return the kinds found re-created since the last
        check (counted in featurestore_lineage_topic_lost_total). Blocking: run it in a
        thread. A broker that cannot be asked leaves ``ready`` false until a later check."""
        from confluent_kafka.admin import AdminClient

        lost: list[str] = []
        ready = True
        for kind, (name, partitions) in self.topics.items():
            try:
                if self._admin is None:
                    self._admin = AdminClient(self.settings.client_config())
                topic_id = ensure_topic(self._admin, name, partitions, self.settings.replication_factor)
            except Exception as e:
                log.warning("cannot create topic %s yet: %s", name, e)
                ready = False
                break  # the broker does not answer: asking about the next topic would wait again
            known = self.ids.get(kind)
            if known and topic_id and topic_id != known:
                self._lost[kind].inc()
                lost.append(kind)
            self.ids[kind] = topic_id or known or ""
        self.ready = ready
        return lost

    def close(self) -> None:
        """Let go of the AdminClient: its threads end with it (AdminClient has no close;
        a check still running in its thread keeps it until it returns)."""
        self._admin = None


class ReadPositions:
    """Per partition of the events topic, as one consumer saw it: the end its fetches
    last reported and the offset after the last message it took. What lies between is
    what a lost topic took along unread. Partitions handed to another member in an
    orderly rebalance are forgotten; lost ones (a session that ended, as with a broker
    that died) are kept until the topic is checked."""

    def __init__(self) -> None:
        self._ends: dict[int, int] = {}
        self._read: dict[int, int] = {}

    def took(self, partition: int, offset: int) -> None:
        self._read[partition] = offset + 1

    def saw_end(self, partition: int, end: int) -> None:
        # Never lower: a partition that restarted empty has lost what the old end counted.
        if end > self._ends.get(partition, -1):
            self._ends[partition] = end

    def end(self, partition: int) -> int | None:
        return self._ends.get(partition)

    def forget(self, partitions: list[int]) -> None:
        for p in partitions:
            self._ends.pop(p, None)
            self._read.pop(p, None)

    def unread(self) -> int:
        ends, read = self._ends.copy(), self._read.copy()  # callbacks change them from other threads
        return sum(max(end - read.get(p, 0), 0) for p, end in ends.items())

    def clear(self) -> None:
        self._ends.clear()
        self._read.clear()
