"""The stream processor: Kafka -> tiles in the view's store, each event's effect once.

One processor per stream view, in its own consumer group, in a thread (confluent-kafka
blocks). Each turn consumes a batch (``consume(num_messages=...)``), decodes and
aggregates it in memory per (key, tile), sends malformed events to the dead-letter
topic, and writes the batch with one ``TileStore.apply``: tiles and every partition's
mark (last offset applied, watermark) together, atomically, from the marks it last saw.
The write runs in a writer thread while the next batch is consumed (one in flight; the
next batch is built on the marks the write in flight will store, and dropped with it if
that write is refused). Only after the write are the offsets committed to Kafka. Whatever is redelivered (a crash before
the commit, a rebalance) is at or below the stored mark and skipped; when another
processor moved a mark meanwhile, the batch is refused whole and the partitions are
re-read from the stored marks. On assignment the consumer starts from the stored marks,
not from Kafka's committed offsets (those only feed lag tools).

What a batch's events do (applied, late, malformed, ...): ``turn.py``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass
from typing import Any, TypeVar

from featurestore.logs import RepeatLimitedLog
from featurestore.model import FeatureView
from featurestore.streaming import eviction, metrics
from featurestore.streaming.dead_letters import DeadLetters
from featurestore.streaming.decode import EventDecoder
from featurestore.streaming.lag import UNKNOWN, LagMeter, committed
from featurestore.streaming.offsets import NewPartitions
from featurestore.streaming.retry import needs_new_connection, retrying, transient
from featurestore.streaming.store import NO_MARK, PartitionMark, TileBatch, TileStore
from featurestore.streaming.tiles import TileAccumulator, view_layout
from featurestore.streaming.turn import Aggregator, Turn
from lineage.kafka import KafkaSettings, close_producer, ensure_topic

log = logging.getLogger(__name__)
T = TypeVar("T")


def consumer_group(prefix: str, project: str, view: FeatureView) -> str:
    """``{prefix}-{project}-{view}-{layout}``: processors of a changed definition (a new
    layout, new tiles and marks) are a group of their own, so during a rolling deploy the
    old and the new ones each read every partition instead of splitting them. Safe: a
    processor resumes from its marks in Redis (per layout), not from the group's offsets."""
    return f"{prefix}-{project}-{view.name}-{view.layout}"


@dataclass(frozen=True, slots=True)
class ProcessorOptions:
    batch_messages: int = 5000
    poll_seconds: float = 0.05
    group_id: str = ""  # default: consumer_group("featurestore-stream", project, view)
    dead_letter_topic: str = ""  # default: {topic}.dlq
    lag_interval_seconds: float = 5.0
    # A dead letter not delivered within this fails (and is produced again): the retry sees
    # a missing topic (and creates it) instead of waiting librdkafka's default 5 minutes.
    dead_letter_timeout_seconds: float = 30.0


class StreamProcessor:
    def __init__(
        self,
        view: FeatureView,
        store: TileStore,
        kafka: KafkaSettings,
        project: str,
        options: ProcessorOptions | None = None,
    ) -> None:
        assert view.stream is not None
        self.view = view
        self.store = store
        self.kafka = kafka
        self.options = options or ProcessorOptions()
        self.topic = view.stream.source.topic
        self.group_id = self.options.group_id or consumer_group("featurestore-stream", project, view)
        self.dead_letter_topic = self.options.dead_letter_topic or f"{self.topic}.dlq"
        self.layout = view_layout(view)
        self.decoder = EventDecoder(view)
        self.marks: dict[int, PartitionMark] = {}  # assigned partitions -> stored mark
        self._partitions = NewPartitions(self.topic)
        self._consumer: Any = None
        self._producer: Any = None
        self._dead_letters: DeadLetters | None = None
        self._lag = LagMeter(view.name, self.topic, self.options.lag_interval_seconds)
        self._assigning: list[Any] = []  # partitions whose marks _on_assign is reading
        self._committed: dict[int, int] | None = None  # their Kafka offsets, if Redis is down meanwhile
        self._consume_thread = 0  # run()'s thread
        # events by outcome, of batches written (and committed): the job runs' row counts
        self.totals: dict[str, int] = {}
        lateness_us = view.stream.allowed_lateness_seconds * 1_000_000
        self._errors = RepeatLimitedLog(log)  # (flushed by this processor's thread: run)
        self._aggregator = Aggregator(view.name, self.decoder, lateness_us, self._errors)
        self._stop = threading.Event()  # run()'s, once it runs
        # One write in flight at a time, in its own thread: Redis merges batch n while
        # batch n+1 is consumed and aggregated (a thread blocked on Redis's answer holds
        # no GIL).
        self._writer = futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"tiles-{view.name}")
        self._eviction_checked = False  # (the writer thread's)
        self._pending: tuple[futures.Future[tuple[str | None, float]], TileBatch, Turn] | None = None

    # -- lifecycle -----------------------------------------------------------------------

    def _connect(self) -> None:
        from confluent_kafka import Consumer, Producer

        base = self.kafka.client_config()
        self._consumer = Consumer(
            {
                **base,
                "group.id": self.group_id,
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "enable.partition.eof": False,
                "session.timeout.ms": self.kafka.session_timeout_ms,
                "heartbeat.interval.ms": self.kafka.heartbeat_interval_ms,
            }
        )
        # Not idempotent: after a message timed out, an idempotent producer bumps its epoch,
        # which Tansu answers with PRODUCER_FENCED for good (seen in the tests); dead letters
        # are at least once anyway (one produced again after a failure may arrive twice).
        timeout_ms = int(self.options.dead_letter_timeout_seconds * 1000)
        self._producer = Producer({**base, "acks": "all", "linger.ms": 5, "message.timeout.ms": timeout_ms})
        self._dead_letters = DeadLetters(
            self._producer, self.dead_letter_topic, self.view.name, self._create_dead_letter_topic
        )
        try:
            self._create_dead_letter_topic()
        except Exception as e:  # the first dead letter that fails for it tries again
            log.warning("stream view %s: dead-letter topic %s: %s", self.view.name, self.dead_letter_topic, e)
        self._consumer.subscribe([self.topic], on_assign=self._on_assign, on_revoke=self._on_revoke)

    def _create_dead_letter_topic(self) -> None:
        from confluent_kafka.admin import AdminClient

        admin = AdminClient(self.kafka.client_config())
        ensure_topic(admin, self.dead_letter_topic, 1, self.kafka.replication_factor)

    def run(self, stop: threading.Event) -> None:
        """Consume until ``stop`` is set; then leave the group and close the clients."""
        self._stop = stop
        self._consume_thread = threading.get_ident()
        up = metrics.UP.labels(self.view.name)
        try:
            self._connect()
            up.set(1)
            for counter in (metrics.PARTITION_RESETS, metrics.STORE_RETRIES, metrics.DEAD_LETTER_FAILURES):
                counter.labels(self.view.name)  # exported from 0, so increase() sees the first one
            log.info("stream view %s: consuming %s as group %s", self.view.name, self.topic, self.group_id)
            while not stop.is_set():
                self.turn(stop)
                self._errors.flush()  # the count of a repeated error, once its interval passed
            self._finish(stop)
        except Exception as e:
            if not (stop.is_set() and transient(e)):
                raise
            # stopped while a store call waited out a failure of Redis's: a stop, not a failure
            log.warning(
                "stream view %s: stopped while the tile store was failing (%s: %s); what was not "
                "written is read again by the partitions' next reader", self.view.name, type(e).__name__, e,
            )  # fmt: skip
        finally:
            self._errors.flush(force=True)  # (the stop: every count so far, review s55)
            up.set(0)
            self._writer.shutdown(wait=True)
            self.close()

    def close(self) -> None:
        """Leave the group and close the Kafka clients (the consume thread's; again: no-op).
        Dead letters still queued after 5 s are dropped: their batch was not written, so
        the next reader meets those events again. Closed, not left to a garbage collection:
        an idle producer's threads reconnect to a stopped broker."""
        consumer, producer = self._consumer, self._producer
        self._consumer = self._producer = self._dead_letters = None
        try:
            if consumer is not None:
                consumer.close()  # (its revoke callback may raise: the producer closes all the same)
        finally:
            if producer is not None:
                producer.flush(5)
                close_producer(producer)

    def _on_assign(self, consumer: Any, partitions: list[Any]) -> None:
        from confluent_kafka import OFFSET_BEGINNING

        self._settle()
        self._assigning, self._committed = partitions, None
        stored = self._retrying(self._stop, self.store.marks, self.view, self.topic)  # Redis may be down
        self._assigning = []
        for p in partitions:
            mark = self.marks[p.partition] = stored.get(p.partition, NO_MARK)
            # No stored mark: from the beginning, not from Kafka's committed offset (the
            # store lost its tiles, e.g. flushed: the windows are rebuilt from the topic)
            p.offset = mark.offset + 1 if mark.offset >= 0 else OFFSET_BEGINNING
        consumer.assign(partitions)
        self._partitions.assigned(consumer, self.marks, [p.partition for p in partitions])
        self._lag.assigned(self.marks.values())
        self._lag.soon()  # measured (and the partitions looked at) at the next turn
        log.info("stream view %s: assigned %s", self.view.name, sorted(p.partition for p in partitions))

    def _on_revoke(self, consumer: Any, partitions: list[Any]) -> None:
        self._settle()  # the write in flight lands before the partitions' next owner reads the marks
        for p in partitions:
            self.marks.pop(p.partition, None)
        self._partitions.revoked(p.partition for p in partitions)
        consumer.unassign()

    def _start_over(self, partition: int) -> None:
        """The partition is a new one under its stored mark (``offsets.py``): the mark is
        reset (an empty batch, conditional on the mark) and the partition applied from its
        start. The tiles applied so far stay: they hold the old partition's events."""
        from confluent_kafka import OFFSET_BEGINNING, TopicPartition

        self._settle()
        mark = self.marks.get(partition)
        if mark is None:  # revoked meanwhile
            return
        log.error(
            "stream view %s: partition %s:%s ends before its stored offset %s: the topic was created "
            "again (or its broker lost it); applying the partition from its start",
            self.view.name, self.topic, partition, mark.offset,
        )  # fmt: skip
        metrics.PARTITION_RESETS.labels(self.view.name).inc()
        now_tile = time.time_ns() // 1000 // self.layout.tile_us
        reset = TileBatch(self.topic, {partition: (mark.offset, NO_MARK)}, {}, now_tile)
        if self._retrying(self._stop, self.store.apply, self.view, reset) is None:
            mark = self.marks[partition] = NO_MARK
        else:  # another processor moved the mark meanwhile: its mark stands
            stored = self._retrying(self._stop, self.store.marks, self.view, self.topic)
            mark = self.marks[partition] = stored.get(partition, NO_MARK)
        offset = mark.offset + 1 if mark.offset >= 0 else OFFSET_BEGINNING
        self._consumer.seek(TopicPartition(self.topic, partition, offset))

    # -- one batch -----------------------------------------------------------------------

    def turn(self, stop: threading.Event) -> None:
        messages = self._consumer.consume(
            num_messages=self.options.batch_messages, timeout=self.options.poll_seconds
        )
        if messages:
            acc = TileAccumulator(self.layout, self.decoder.column_attrs)
            turn = self._aggregate(messages, acc)
            self._partitions.fetched(turn.work)  # every assigned partition a message came from
            self._lag.consumed(turn.first_ms)
            if turn.work and self._finish(stop):
                self._submit(turn, acc, stop)
        elif self._pending is not None:
            self._finish(stop)
        self._measure_lag()
        check = self._partitions
        if check.unverified:
            check.look(self._consumer, self.marks, list(check.unverified))
        for p in check.confirmed(self._consumer, self.marks) if check.suspects else ():
            self._start_over(p)

    def _aggregate(self, messages: list[Any], acc: TileAccumulator) -> Turn:
        return self._aggregator(messages, acc, self.marks)

    def _submit(self, turn: Turn, acc: TileAccumulator, stop: threading.Event) -> None:
        """Write the batch in the writer thread while the next one is consumed; the marks
        move at once (the next batch is built on them) and back if the write is refused."""
        if turn.dead:
            assert self._dead_letters is not None
            # the marks move only after: the lag measured meanwhile counts this batch as waiting
            if not self._dead_letters.deliver(turn.dead, stop, self._measure_lag):
                return  # stopped first: not written, so the next reader meets these events again
            turn.counts["dead_lettered"] = len(turn.dead)
        batch = TileBatch(
            topic=self.topic,
            marks=turn.marks,  # (with each partition's recent event times: turn.py)
            records=acc.records,
            now_tile=time.time_ns() // 1000 // self.layout.tile_us,
            events=turn.counts["applied"],
        )
        for p, (_, mark) in batch.marks.items():
            if p in self.marks:
                self.marks[p] = mark
        future = self._writer.submit(self._write, stop, batch)
        self._pending = (future, batch, turn)

    def _write(self, stop: threading.Event, batch: TileBatch) -> tuple[str | None, float]:
        """The batch's write (in the writer thread), and when it ended: its events were
        servable from then (``_finish`` runs only once the next batch is consumed)."""
        refused = self._retrying(stop, self.store.apply, self.view, batch)
        written = time.time()
        if not self._eviction_checked:
            self._eviction_checked = eviction.checked(self.store, self.view.name)
        return refused, written

    def _settle(self) -> None:
        if self._pending is not None:
            futures.wait([self._pending[0]])

    def _finish(self, stop: threading.Event) -> bool:
        """Wait for the write in flight and account for it; False when it was refused
        (the partitions are re-read from the stored marks: a batch built meanwhile is void)."""
        if self._pending is None:
            return True
        future, batch, turn = self._pending
        # The store may be unreachable for long (the write retries until it answers):
        # keep measuring the lag meanwhile, or the lag alert would see a frozen figure.
        while not futures.wait([future], timeout=self.options.lag_interval_seconds).done:
            self._measure_lag(waiting=batch)
        self._pending = None
        refused, written_s = future.result()
        view = self.view.name
        if refused is not None and self._landed(batch):
            log.info("stream view %s: a retried write had landed before its answer was lost", view)
            refused = None
        if refused is not None:
            metrics.BATCHES.labels(view, "conflict").inc()
            log.warning(
                "stream view %s: batch refused (%s); re-reading from the stored offsets", view, refused
            )
            self._reseek()
            return False
        metrics.BATCHES.labels(view, "applied").inc()
        for outcome, n in turn.counts.items():
            if n:
                metrics.EVENTS.labels(view, outcome).inc(n)
                self.totals[outcome] = self.totals.get(outcome, 0) + n
        for ts_ms in {turn.oldest_ms, turn.newest_ms}:  # (of the events applied: 0 when none)
            if ts_ms > 0:
                metrics.LATENCY.labels(view).observe(max(0.0, written_s - ts_ms / 1000))
        self._lag.applied(turn.last_ms)
        self._commit(batch)
        return True

    def _landed(self, batch: TileBatch) -> bool:
        """Whether the stored marks are the batch's own: a write retried after a timeout
        is refused when its first attempt had run (the marks moved: to its marks)."""
        stored = self._retrying(self._stop, self.store.marks, self.view, self.topic)
        return all(stored.get(p) == mark for p, (_, mark) in batch.marks.items())

    def _commit(self, batch: TileBatch) -> None:
        from confluent_kafka import KafkaException, TopicPartition

        offsets = [TopicPartition(self.topic, p, mark.offset + 1) for p, (_, mark) in batch.marks.items()]
        try:
            self._consumer.commit(offsets=offsets, asynchronous=True)
        except KafkaException as e:  # the marks in the store are what counts; Kafka's are for lag tools
            log.debug("stream view %s: commit: %s", self.view.name, e)

    def _reseek(self) -> None:
        from confluent_kafka import OFFSET_BEGINNING, TopicPartition

        stored = self._retrying(self._stop, self.store.marks, self.view, self.topic)
        for p in list(self.marks):
            mark = self.marks[p] = stored.get(p, NO_MARK)
            offset = mark.offset + 1 if mark.offset >= 0 else OFFSET_BEGINNING
            self._consumer.seek(TopicPartition(self.topic, p, offset))

    def _retrying(self, stop: threading.Event, fn: Callable[..., T], *args: Any) -> T:
        """A store call, waiting out the store's server failures (``retry.py``)."""
        return retrying(stop, self._store_failed, fn, *args)

    def _store_failed(self, error: BaseException) -> None:
        metrics.STORE_RETRIES.labels(self.view.name).inc()
        log.warning(
            "stream view %s: tile store: %s: %s; retrying", self.view.name, type(error).__name__, error
        )
        if needs_new_connection(error):
            self.store.close()  # the next call connects again (the Redis adapter's client is lazy)
        if threading.get_ident() == self._consume_thread:  # blocked in a marks read: the lag grows
            self._measure_lag()

    def _measure_lag(self, waiting: TileBatch | None = None) -> None:
        """At most once per ``lag_interval_seconds`` (``lag.py``); ``waiting``: a write that
        has been waiting for the store longer than that, whose messages are not applied yet."""
        if not self._lag.due():
            return
        in_flight = {p: exp for p, (exp, _) in waiting.marks.items()} if waiting is not None else {}
        positions = {}
        for p, mark in list(self.marks.items()):
            offset = in_flight.get(p, mark.offset)
            positions[p] = offset + 1 if offset >= 0 else UNKNOWN
        if self._assigning:  # _on_assign waits for the marks: Kafka's committed offsets stand in
            if self._committed is None:
                self._committed = committed(
                    self._consumer, self.topic, [p.partition for p in self._assigning]
                )
            positions.update((p, o) for p, o in self._committed.items() if p not in positions)
        self._lag.measure(self._consumer, positions)
        self._partitions.look(self._consumer, self.marks, list(self.marks))
