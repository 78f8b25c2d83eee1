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

from lineage import metrics
from lineage.events import LineageEvent, encode_event
from lineage.graph.base import LineageGraph, event_time_ms
from lineage.kafka import KafkaSettings, close_producer
from lineage.runs import JobRunEvent, encode_run
from lineage.topics import TopicWatch

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

    def __init__(self, graph: LineageGraph, window_seconds: float = 1.0) -> None:
        self.graph = graph
        self.window_seconds = window_seconds  # the emitter's: an event is ready at its window's end

    async def start(self) -> None:
        metrics.SINK_UP.labels("in-process").set(1)

    async def close(self) -> None:
        return None

    async def send(self, events: Sequence[LineageEvent]) -> None:
        t0 = time.perf_counter()
        await self.graph.write_events(events)
        metrics.GRAPH_WRITE.observe(time.perf_counter() - t0)
        observe_event_to_graph(events, self.window_seconds)
        metrics.EVENTS.labels("delivered").inc(len(events))

    async def send_runs(self, runs: Sequence[JobRunEvent]) -> None:
        await self.graph.write_runs(runs)


# How long a producer replaced after a broker lost its topic may still report (and so
# hand over) the events it was purged of. In the broker-loss test the last report came
# 0.05-0.1 s after the purge (one or two poll rounds); 5 s is fifty times that.
DRAIN_SECONDS = 5.0

# While nothing is delivered for this long, the poller asks a broker for metadata this
# often, so the up gauge also tells the truth for an idle server or a silent broker.
PROBE_SECONDS = 5.0


@dataclass(slots=True)
class _Generation:
    """The events one producer instance holds that have no delivery report yet. When the
    producer is replaced or closed, what it still holds is counted once and its late
    reports (if any) are ignored."""

    events: int = 0
    served: int = 0
    runs: int = 0  # job-run messages (send_runs): counted apart, they are not events
    retired: bool = False
    resend: bool = False  # what it still holds goes to the next producer, not to the counts


class KafkaSink:
    """confluent-kafka producer: idempotent, acks=all, key = feature_id.

    ``produce`` only enqueues into librdkafka's bounded buffer, so sending never blocks
    the event loop; while Kafka is down events wait there for ``buffer_seconds`` and the
    server keeps serving. Every event handed over ends in exactly one count: delivered,
    or broken (buffer full, refused by the producer, expired, or still buffered at
    shutdown). A producer that fails fatally (an idempotence violation) is replaced, and
    so is one whose broker lost the topic (it came back re-created, with a new topic id):
    the broker forgot the producer's id with it, and Tansu answers such a producer
    UNKNOWN_PRODUCER_ID until its events expire. The new producer re-sends what the old
    one had not delivered."""

    def __init__(self, settings: KafkaSettings, *, linger_ms: int = 20, close_seconds: float = 5.0) -> None:
        self.config = settings
        self.linger_ms = linger_ms
        self.close_seconds = close_seconds  # on shutdown, how long buffered events may still go out
        self._up = metrics.SINK_UP.labels("kafka")
        self._poller: asyncio.Task[None] | None = None
        self._topic = TopicWatch(settings, "sink", {"events": (settings.topic, settings.partitions)})
        self._last_delivery = time.monotonic()
        self._fatal: Any = None  # the fatal error that made the current producer unusable
        self._warned = 0.0
        self._unreported = 0  # failures since the last warning
        self._gen = _Generation()
        self._producer = self._new_producer()
        # Replaced producers whose purged events are still being reported (and re-sent),
        # each with the time it is retired regardless.
        self._draining: list[tuple[Any, _Generation, float]] = []
        # Retired producers being closed in a thread: freeing one (rd_kafka_destroy) on
        # the event loop stalled it for ~35 ms.
        self._closing: set[asyncio.Task[None]] = set()
        self._closed = False

    def _new_producer(self) -> Any:
        from confluent_kafka import Producer

        return Producer(
            {
                **self.config.client_config(),
                "enable.idempotence": True,
                "acks": "all",
                "linger.ms": self.linger_ms,
                "compression.type": "lz4",
                "queue.buffering.max.messages": self.config.buffer_messages,
                "message.timeout.ms": self.config.buffer_seconds * 1000,
                "socket.connection.setup.timeout.ms": 3000,
                # Only _ensure_topic creates the topic, with the configured partitions and
                # replication: a producer that asked the broker to create it on first use
                # won that race and got the broker's default (Tansu: 4 partitions).
                "allow.auto.create.topics": False,
                "error_cb": self._on_error,
            }
        )

    async def start(self) -> None:
        self._up.set(0)
        self._poller = asyncio.create_task(self._poll(), name="lineage-kafka-poll")

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True  # what is sent from now on is counted as failed, not produced
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
        retired = [old for old, _, _ in self._draining]
        for old, gen, _ in self._draining:
            self._retire(old, gen)  # what it still reports is re-sent, the rest counted
        self._draining.clear()
        # Give in-flight events a moment; whatever is still buffered then is lost with
        # the producer, so it is counted as undelivered rather than vanishing.
        await asyncio.to_thread(self._producer.flush, self.close_seconds)
        lost = self._retire(self._producer, self._gen)
        if lost:
            log.warning("lineage sink closed with %d events undelivered", lost)
        for producer in [*retired, self._producer]:  # their threads end now (kafka.close_producer)
            with contextlib.suppress(Exception):
                await asyncio.to_thread(close_producer, producer)
        await asyncio.gather(*self._closing, return_exceptions=True)
        await asyncio.to_thread(self._topic.close)

    async def send(self, events: Sequence[LineageEvent]) -> None:
        if self._closed:
            for event in events:
                self._failed(event.served_count, "the sink is closed")
            return
        if self._fatal is not None:
            self._replace_producer()
        for event in events:
            self._produce(event)
        self._producer.poll(0)

    async def send_runs(self, runs: Sequence[JobRunEvent]) -> None:
        """Job runs go on the same topic (``"type": "job_run"``), keyed by job, so one
        job's reports keep their order. They carry no served values to count."""
        if self._closed:
            for _ in runs:
                self._failed(0, "the sink is closed", run=True)
            return
        for run in runs:
            self._produce_message(run.key, encode_run(run), 0, run=True)
        self._producer.poll(0)

    def _produce(self, event: LineageEvent) -> None:
        self._produce_message(event.key, encode_event(event), event.served_count)

    def _produce_message(
        self, key: bytes | str, value: bytes, served: int, retry: bool = True, run: bool = False
    ) -> None:
        from confluent_kafka import KafkaException

        gen = self._gen
        try:
            self._producer.produce(
                self.config.topic, key=key, value=value, on_delivery=_on_delivery(self, gen, served, run)
            )
        except BufferError:
            if run:
                metrics.RUN_MESSAGES.labels("dropped").inc()
                return
            metrics.BROKEN.labels("sink_buffer_full").inc(served)
            metrics.EVENTS.labels("dropped").inc()
            return
        except KafkaException as e:
            error = e.args[0] if e.args else None
            if retry and error is not None and error.fatal():
                self._fatal = error
                self._replace_producer()
                self._produce_message(key, value, served, retry=False, run=run)
                return
            # Only this event is lost (e.g. larger than the broker accepts): the events
            # before it are on their way and the ones after it still go.
            self._failed(served, e, run)
            return
        if run:
            gen.runs += 1
        else:
            gen.events += 1
            gen.served += served

    def _replace_producer(self, resend: bool = False) -> None:
        """Start a new producer. A producer that failed fatally refuses everything from
        then on: whatever it still held is counted as undelivered. With ``resend`` the
        old producer's undelivered events go to the new one instead: it is purged, and
        the poller serves its reports (events in flight are reported only once their
        request is dropped) until it holds nothing or DRAIN_SECONDS passed."""
        if not resend:
            log.error("lineage producer failed fatally (%s); replacing it", self._fatal)
        old, gen = self._producer, self._gen
        self._gen = _Generation()
        # Created here, on the loop: 0.2-2 ms (measured 2026-12-07), and the message that
        # found the old producer failed goes to the new one at once. Closing the old one
        # takes ~35 ms: that goes to a thread (_dispose).
        self._producer = self._new_producer()
        self._fatal = None
        if not resend:
            self._retire(old, gen)
            self._dispose(old)
            return
        gen.resend = True
        with contextlib.suppress(Exception):
            old.purge()
        self._draining.append((old, gen, time.monotonic() + DRAIN_SECONDS))

    def _drain(self) -> None:
        """Serve the reports of replaced producers; retire each once it is empty."""
        now = time.monotonic()
        for item in list(self._draining):
            old, gen, until = item
            old.poll(0)
            if len(old) == 0 or now > until:
                self._draining.remove(item)
                self._retire(old, gen)
                self._dispose(old)

    def _dispose(self, producer: Any) -> None:
        """Close a retired producer in a thread, off the event loop (see _closing)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # a report served in a thread (close's flush): already off the loop
            close_producer(producer)
            return
        task = loop.create_task(asyncio.to_thread(close_producer, producer))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    def _retire(self, producer: Any, gen: _Generation) -> int:
        """Fail what ``producer`` still holds (its reports count it), count what got no
        report, and ignore anything it reports later. Returns the events lost."""
        lost = gen.events
        with contextlib.suppress(Exception):
            producer.purge()
            producer.poll(0)
        if gen.events:
            metrics.BROKEN.labels("undelivered").inc(gen.served)
            metrics.EVENTS.labels("failed").inc(gen.events)
        if gen.runs:
            metrics.RUN_MESSAGES.labels("failed").inc(gen.runs)
        gen.retired = True
        gen.events = gen.served = gen.runs = 0
        return lost

    async def _ensure_topic(self) -> None:
        """Create the topic when missing; best effort, from the poller only (``send``
        never waits for it: events queue in the buffer meanwhile). A topic the broker
        lost is counted by the watch, and the producer is replaced (see the class)."""
        if await asyncio.to_thread(self._topic.check):
            log.warning(
                "lineage topic %s was re-created (the broker lost it, with the events it held); "
                "re-sending the %d events not yet delivered with a new producer",
                self.config.topic, self._gen.events,
            )  # fmt: skip
            self._replace_producer(resend=True)

    def _reachable(self) -> bool:
        try:
            self._producer.list_topics(timeout=2)  # a real round trip to a broker
            return True
        except Exception:
            return False

    async def _poll(self) -> None:
        """Serve delivery callbacks (they run on this, the event loop's, thread), and
        make sure the topic exists: at start, after a delivery said it is unknown, and
        when buffered events stopped being delivered (a broker that came back without
        the topic would otherwise hold them until they expire). A healthy stream of
        deliveries costs no admin calls. Without deliveries the broker is probed, so the
        up gauge drops within seconds of Kafka going away even on an idle server, and
        rises for an idle server whose Kafka is fine."""
        checked = 0.0
        probed: float | None = None
        while True:
            self._producer.poll(0)
            if self._draining:
                self._drain()
            if self._fatal is not None:
                self._replace_producer()
            now = time.monotonic()
            stalled = len(self._producer) > 0 and now - self._last_delivery > PROBE_SECONDS
            if (not self._topic.ready or stalled) and now - checked > 5.0:
                checked = now
                await self._ensure_topic()
            quiet = now - self._last_delivery > PROBE_SECONDS
            if probed is None or (quiet and now - probed > PROBE_SECONDS):
                probed = now
                reachable = await asyncio.to_thread(self._reachable)
                if time.monotonic() - self._last_delivery > PROBE_SECONDS:  # no delivery meanwhile
                    self._up.set(1 if reachable and self._topic.ready and not stalled else 0)
            await asyncio.sleep(0.05)

    def _on_error(self, error: Any) -> None:
        """librdkafka's client-level errors (from poll or flush)."""
        from confluent_kafka import KafkaError

        if error.fatal():
            self._fatal = error  # replaced by the poller or the next send
            self._up.set(0)
        elif error.code() == KafkaError._ALL_BROKERS_DOWN:
            self._up.set(0)
            log.warning("lineage sink: %s", error)
        else:
            log.debug("lineage sink: %s", error)

    def delivered(self, gen: _Generation, served: int, error: Any, msg: Any, run: bool = False) -> None:
        if gen.retired:
            return  # already counted when its producer was retired
        if run:
            gen.runs -= 1
        else:
            gen.events -= 1
            gen.served -= served
        if gen.resend and error is not None and _purged(error):
            self._produce_message(msg.key(), msg.value(), served, run=run)  # to the new producer
            return
        if error is None:
            (metrics.RUN_MESSAGES if run else metrics.EVENTS).labels("delivered").inc()
            self._last_delivery = time.monotonic()
            self._up.set(1)
            return
        if "UNKNOWN_TOPIC" in str(error) or "UNKNOWN_PARTITION" in str(error):
            self._topic.ready = False  # e.g. a broker that lost its topics: create it again
        self._up.set(0)
        self._failed(served, error, run)

    def _failed(self, served: int, error: Any, run: bool = False) -> None:
        if run:
            metrics.RUN_MESSAGES.labels("failed").inc()
        else:
            metrics.EVENTS.labels("failed").inc()
            metrics.BROKEN.labels("undelivered").inc(served)
        # One line per few seconds, not one per event: a broker outage fails thousands.
        self._unreported += 1
        now = time.monotonic()
        if now - self._warned > 5.0:
            log.warning("lineage events not delivered: %d (latest: %s)", self._unreported, error)
            self._warned, self._unreported = now, 0


def _purged(error: Any) -> bool:
    """A message its producer dropped when told to (purge): neither delivered nor
    refused by the broker, so another producer may send it."""
    from confluent_kafka import KafkaError

    return bool(error.code() in (KafkaError._PURGE_QUEUE, KafkaError._PURGE_INFLIGHT))


def _on_delivery(sink: KafkaSink, gen: _Generation, served: int, run: bool) -> Any:
    def callback(err: Any, msg: Any) -> None:
        sink.delivered(gen, served, err, msg, run)

    return callback
