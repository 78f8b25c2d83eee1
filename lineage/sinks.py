"""Where lineage events go: Kafka (production) or straight into an in-process graph
(embedded default). Both count what they cannot deliver as broken lineage."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from lineage import TOPIC, metrics
from lineage.events import LineageEvent, encode_event
from lineage.graph.base import LineageGraph, event_time_ms

log = logging.getLogger(__name__)


class LineageSink(Protocol):
    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def send(self, events: Sequence[LineageEvent]) -> None:
        """Hand events on; delivery failures are counted (broken lineage), not raised."""
        ...


def observe_event_to_graph(events: Sequence[LineageEvent], window_seconds: float = 1.0) -> None:
    """Latency from the end of each event's window to its write into the graph."""
    now_ms = time.time() * 1000
    for e in events:
        metrics.EVENT_TO_GRAPH.observe(max(now_ms - event_time_ms(e) - window_seconds * 1000, 0) / 1000)


class InProcessSink:
    """The embedded default: events go straight to the in-process graph writer."""

    def __init__(self, graph: LineageGraph) -> None:
        self.graph = graph

    async def start(self) -> None:
        metrics.SINK_UP.labels("in-process").set(1)

    async def close(self) -> None:
        return None

    async def send(self, events: Sequence[LineageEvent]) -> None:
        t0 = time.perf_counter()
        await self.graph.write_events(events)
        metrics.GRAPH_WRITE.observe(time.perf_counter() - t0)
        observe_event_to_graph(events)
        metrics.EVENTS.labels("delivered").inc(len(events))


@dataclass(frozen=True, slots=True)
class KafkaSinkConfig:
    bootstrap_servers: str = "127.0.0.1:9092"
    topic: str = TOPIC
    partitions: int = 6
    replication_factor: int = 1
    buffer_messages: int = 100_000  # librdkafka queue bound; beyond it events are dropped
    buffer_seconds: int = 120  # how long an undeliverable event is retried before it counts as lost
    linger_ms: int = 20


class KafkaSink:
    """confluent-kafka producer: idempotent, acks=all, key = feature_id.

    ``produce`` only enqueues into librdkafka's bounded buffer, so sending never blocks
    the event loop; while Kafka is down events wait there for ``buffer_seconds`` and the
    server keeps serving. A full buffer or an expired event is counted as broken."""

    def __init__(self, config: KafkaSinkConfig) -> None:
        from confluent_kafka import Producer

        self.config = config
        self._producer = Producer(
            {
                "bootstrap.servers": config.bootstrap_servers,
                "log.connection.close": False,
                "enable.idempotence": True,
                "acks": "all",
                "linger.ms": config.linger_ms,
                "compression.type": "lz4",
                "queue.buffering.max.messages": config.buffer_messages,
                "message.timeout.ms": config.buffer_seconds * 1000,
                "socket.connection.setup.timeout.ms": 3000,
            }
        )
        self._up = metrics.SINK_UP.labels("kafka")
        self._poller: asyncio.Task[None] | None = None
        self._topic_ready = False
        self._admin: Any = None  # one AdminClient (a librdkafka instance), made on first use
        self._last_delivery = time.monotonic()

    async def start(self) -> None:
        self._up.set(0)
        self._poller = asyncio.create_task(self._poll(), name="lineage-kafka-poll")

    async def close(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
        # Give in-flight events a moment; whatever is left is counted by its callback.
        await asyncio.to_thread(self._producer.flush, 5.0)

    async def send(self, events: Sequence[LineageEvent]) -> None:
        for event in events:
            try:
                self._producer.produce(
                    self.config.topic,
                    key=event.key,
                    value=encode_event(event),
                    on_delivery=_on_delivery(self, event.served_count),
                )
            except BufferError:
                metrics.BROKEN.labels("sink_buffer_full").inc(event.served_count)
                metrics.EVENTS.labels("dropped").inc()
        self._producer.poll(0)

    async def _ensure_topic(self) -> None:
        """Create the topic when missing; best effort, from the poller only (``send``
        never waits for it: events queue in the buffer meanwhile)."""
        from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

        def create() -> bool:
            if self._admin is None:
                self._admin = AdminClient(
                    {"bootstrap.servers": self.config.bootstrap_servers, "log.connection.close": False}
                )
            admin = self._admin
            topics = admin.list_topics(timeout=3).topics
            if self.config.topic in topics:
                return True
            topic = NewTopic(
                self.config.topic,
                num_partitions=self.config.partitions,
                replication_factor=self.config.replication_factor,
            )
            for fut in admin.create_topics([topic]).values():
                try:
                    fut.result(timeout=5)
                except Exception as e:
                    if "already exists" not in str(e).lower() and "TOPIC_ALREADY_EXISTS" not in str(e):
                        raise
            return True

        try:
            self._topic_ready = await asyncio.to_thread(create)
        except Exception as e:
            log.warning("cannot create lineage topic %s yet: %s", self.config.topic, e)

    async def _poll(self) -> None:
        """Serve delivery callbacks (they run on this, the event loop's, thread), and
        make sure the topic exists: at start, after a delivery said it is unknown, and
        when buffered events stopped being delivered (a broker that came back without
        the topic would otherwise hold them until they expire). A healthy stream of
        deliveries costs no admin calls."""
        checked = 0.0
        while True:
            self._producer.poll(0)
            now = time.monotonic()
            stalled = len(self._producer) > 0 and now - self._last_delivery > 5.0
            if (not self._topic_ready or stalled) and now - checked > 5.0:
                checked = now
                await self._ensure_topic()
            await asyncio.sleep(0.05)

    def delivered(self, served: int, error: Any) -> None:
        if error is None:
            metrics.EVENTS.labels("delivered").inc()
            self._last_delivery = time.monotonic()
            self._up.set(1)
            return
        if "UNKNOWN_TOPIC" in str(error) or "UNKNOWN_PARTITION" in str(error):
            self._topic_ready = False  # e.g. a broker that lost its topics: create it again
        log.warning("lineage event not delivered: %s", error)
        self._up.set(0)
        metrics.EVENTS.labels("failed").inc()
        metrics.BROKEN.labels("undelivered").inc(served)


def _on_delivery(sink: KafkaSink, served: int) -> Any:
    def callback(err: Any, _msg: Any) -> None:
        sink.delivered(served, err)

    return callback
