"""``featurestore lineage consume``: Kafka ``feature-lineage-v1`` -> the lineage graph.

At-least-once: a batch is written to the graph (idempotent MERGEs, retried until it
succeeds) before its offsets are committed, so a crash replays rather than loses, and a
replay never duplicates. A message that is not a valid event goes to the dead-letter
topic with the reason and its origin in headers, and the consumer goes on. Partitions
are only handed over between batches, so a rebalance never splits a batch; shutdown
finishes the batch in hand, commits, and leaves the group.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

from lineage import TOPIC, metrics
from lineage.events import LineageEvent, MalformedEvent, decode_event
from lineage.graph.base import LineageGraph
from lineage.sinks import observe_event_to_graph

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ConsumerConfig:
    bootstrap_servers: str = "127.0.0.1:9092"
    topic: str = TOPIC
    group_id: str = "featurestore-lineage"
    dead_letter_topic: str = f"{TOPIC}.dlq"
    batch_size: int = 500
    batch_wait_ms: int = 200
    session_timeout_ms: int = 10_000
    heartbeat_interval_ms: int = 3_000
    window_seconds: float = 1.0  # the emitters' window, for the event-to-graph latency


class LineageConsumer:
    def __init__(self, config: ConsumerConfig, graph: LineageGraph) -> None:
        from confluent_kafka import Consumer, Producer

        self.config = config
        self.graph = graph
        self._consumer = Consumer(
            {
                "bootstrap.servers": config.bootstrap_servers,
                "log.connection.close": False,
                "group.id": config.group_id,
                "enable.auto.commit": False,
                # Offsets are stored only for messages whose batch reached the graph (or
                # the dead-letter topic); a commit can then never cover unwritten events.
                "enable.auto.offset.store": False,
                "auto.offset.reset": "earliest",
                "session.timeout.ms": config.session_timeout_ms,
                "heartbeat.interval.ms": config.heartbeat_interval_ms,
                "enable.partition.eof": False,
            }
        )
        self._dlq = Producer(
            {"bootstrap.servers": config.bootstrap_servers, "enable.idempotence": True, "acks": "all"}
        )
        self._assigned: list[Any] = []
        self._last_lag = 0.0
        self.written = 0  # events written, for callers and tests
        self.dead_lettered = 0

    async def run(self, stop: asyncio.Event) -> None:
        self._consumer.subscribe([self.config.topic], on_assign=self._on_assign, on_revoke=self._on_revoke)
        log.info("consuming %s as group %s", self.config.topic, self.config.group_id)
        try:
            while not stop.is_set():
                messages = await asyncio.to_thread(
                    self._consumer.consume,
                    num_messages=self.config.batch_size,
                    timeout=self.config.batch_wait_ms / 1000,
                )
                if messages:
                    await self._handle(messages, stop)
                if time.monotonic() - self._last_lag > 1.0:
                    await asyncio.to_thread(self._report_lag)
        finally:
            await asyncio.to_thread(self._close)

    async def _handle(self, messages: list[Any], stop: asyncio.Event) -> None:
        events: list[LineageEvent] = []
        dead: list[tuple[Any, str]] = []
        for m in messages:
            if m.error():
                log.warning("kafka: %s", m.error())
                continue
            try:
                events.append(decode_event(m.value() or b""))
            except MalformedEvent as e:
                dead.append((m, str(e)))
        if dead:
            await asyncio.to_thread(self._dead_letter, dead)
        if events and not await self._write(events, stop):
            return  # stopping before the batch was written: its offsets stay unstored
        await asyncio.to_thread(self._store_and_commit, messages)

    async def _write(self, events: list[LineageEvent], stop: asyncio.Event) -> bool:
        delay = 0.1
        while True:
            t0 = time.perf_counter()
            try:
                await self.graph.write_events(events)
            except Exception as failure:  # the graph is down or busy: keep the batch, retry
                log.warning("graph write failed (%r); retrying in %.1fs", failure, delay)
                try:
                    await asyncio.wait_for(stop.wait(), timeout=delay)
                    return False
                except TimeoutError:
                    delay = min(delay * 2, 5.0)
                    continue
            metrics.GRAPH_WRITE.observe(time.perf_counter() - t0)
            observe_event_to_graph(events, self.config.window_seconds)
            metrics.CONSUMED.labels("written").inc(len(events))
            self.written += len(events)
            return True

    def _dead_letter(self, dead: list[tuple[Any, str]]) -> None:
        for m, reason in dead:
            origin = f"{m.topic()}/{m.partition()}/{m.offset()}"
            log.warning("dead-lettering %s: %s", origin, reason)
            self._dlq.produce(
                self.config.dead_letter_topic,
                key=m.key(),
                value=m.value(),
                headers=[("reason", reason.encode()), ("origin", origin.encode())],
            )
        # Delivered before the originals are committed: a dead letter is never lost.
        remaining = self._dlq.flush(10)
        if remaining:
            raise RuntimeError(f"{remaining} dead letters not delivered; the batch will be consumed again")
        metrics.CONSUMED.labels("dead_letter").inc(len(dead))
        self.dead_lettered += len(dead)

    def _store_and_commit(self, messages: list[Any]) -> None:
        for m in messages:
            if not m.error():
                self._consumer.store_offsets(message=m)
        self._commit()

    def _commit(self) -> None:
        """Commit the stored offsets: only batches already written."""
        from confluent_kafka import KafkaException

        try:
            self._consumer.commit(asynchronous=False)
        except KafkaException as e:  # e.g. nothing stored to commit
            log.debug("commit: %s", e)

    def _on_assign(self, _consumer: Any, partitions: list[Any]) -> None:
        self._assigned = list(partitions)
        log.info("assigned partitions %s", [p.partition for p in partitions])

    def _on_revoke(self, _consumer: Any, partitions: list[Any]) -> None:
        log.info("revoking partitions %s", [p.partition for p in partitions])
        self._commit()
        self._assigned = []

    def _report_lag(self) -> None:
        self._last_lag = time.monotonic()
        if not self._assigned:
            return
        try:
            committed = self._consumer.committed(self._assigned, timeout=2)
            for tp in committed:
                _, high = self._consumer.get_watermark_offsets(tp, timeout=2, cached=False)
                done = tp.offset if tp.offset >= 0 else 0
                metrics.CONSUMER_LAG.labels(str(tp.partition)).set(max(high - done, 0))
        except Exception as e:
            log.debug("lag: %s", e)

    def _close(self) -> None:
        self._commit()
        self._consumer.close()
        self._dlq.flush(5)
