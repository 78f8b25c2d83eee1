"""``featurestore lineage consume``: Kafka ``feature-lineage-v1`` -> the lineage graph.

At-least-once: a batch is written to the graph (idempotent MERGEs) before its offsets
are committed, so a crash replays rather than loses, and a replay never duplicates.
Nothing is skipped while the graph cannot take writes: the batch waits (backoff, not
committed) when a write fails as unavailable (GraphUnavailable, a connection error), or
fails otherwise and a probe write fails too (a graph that answers reads but refuses
writes fails it). A message that cannot become graph facts goes to the dead-letter
topic with the reason and its origin in headers (lineage/dead_letters.py), and the
consumer goes on: one that is not a valid event (whatever its decoder raises), and one
the graph refuses alone, twice, while it takes the probe (ArcadeDB answers
Neo.DatabaseError.* for statements the data breaks). Partitions are only handed over
between batches, so a rebalance never splits a batch; shutdown leaves the batch in hand
at once (a write or probe in flight is cancelled), uncommitted (read again after a
restart), and leaves the group.

Both topics are created at start when missing, and checked every TOPIC_CHECK_SECONDS
beside the batches. A topic that comes back with a new id was lost by the broker: the
events the consumer had seen in it but not read are counted as lost, nothing read from
the old topic is committed, and the consumer joins the group again to read the new
topic from its start (docs/lineage.md, "Losing the broker").
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Any

from lineage import metrics
from lineage.consumer_graph import Stopped, unavailable, until_stopped, why
from lineage.dead_letters import MAX_MESSAGE_BYTES, MAX_REASON, DeadLetter, DeadLetterQueue, stopped
from lineage.events import LineageEvent, MalformedEvent, decode_event
from lineage.graph.base import LineageGraph
from lineage.kafka import KafkaSettings
from lineage.runs import JobRunEvent, decode_run, is_run
from lineage.sinks import observe_event_to_graph
from lineage.topics import ReadPositions, TopicWatch

log = logging.getLogger(__name__)

DEAD_LETTER_PARTITIONS = 1
# How often the consumer checks that its topics exist and are the ones it knew: an
# admin request for two topics every 5 s; a lost topic is noticed (and created again)
# within about this long.
TOPIC_CHECK_SECONDS = 5.0


class LineageConsumer:
    def __init__(
        self,
        settings: KafkaSettings,
        graph: LineageGraph,
        *,
        batch_size: int = 500,
        batch_wait_ms: int = 200,
        window_seconds: float = 1.0,  # the emitters' window, for the event-to-graph latency
        dead_letter_max_bytes: int = MAX_MESSAGE_BYTES,
    ) -> None:
        from confluent_kafka import Consumer

        self.config = config = settings
        self.graph = graph
        self.batch_size = batch_size
        self.batch_wait_ms = batch_wait_ms
        self.window_seconds = window_seconds
        self._consumer = Consumer(
            {
                **config.client_config(),
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
        self._dlq = DeadLetterQueue(config, self._check_topics, dead_letter_max_bytes)
        for outcome in metrics.CONSUMED_OUTCOMES:  # 0 from the start: rates and ratios, never absent
            metrics.CONSUMED.labels(outcome)
        topics = {"events": (config.topic, config.partitions)}
        topics["dead_letters"] = (config.dead_letter_topic, DEAD_LETTER_PARTITIONS)
        self._topics = TopicWatch(config, "consumer", topics)
        self._checking = threading.Lock()  # one topic check at a time
        self._assignment = threading.Lock()  # the callbacks' thread against the lag report's
        self._positions = ReadPositions()
        self._topic_generation = 0  # +1 each time the broker lost the events topic
        self._dropping = False  # the topic was lost: its stored offsets must not be committed
        self._assigned: list[Any] = []
        self._graph_seen = 0.0  # when a write or probe last told whether the graph answers
        self._holding = False  # a batch waits for the graph: its writes report graph_up
        self.written = 0  # events written, for callers and tests
        self.lost_events = 0  # events a lost topic took along unread

    @property
    def dead_lettered(self) -> int:
        """Messages delivered to the dead-letter topic (whole or truncated)."""
        return self._dlq.delivered

    @property
    def dead_letter_failures(self) -> int:
        """Delivery rounds that left dead letters behind."""
        return self._dlq.failures

    async def run(self, stop: asyncio.Event) -> None:
        # Both topics exist before they are needed: the subscription finds its topic at
        # once, and a broker that does not create topics on demand cannot hold the
        # first dead letter (and so its batch's commit) until someone creates it.
        await asyncio.to_thread(self._check_topics)
        self._subscribe()
        log.info("consuming %s as group %s", self.config.topic, self.config.group_id)
        done = asyncio.Event()
        monitor = asyncio.create_task(self._monitor(done), name="lineage-consumer-monitor")
        try:
            while not stop.is_set():
                messages = await asyncio.to_thread(
                    self._consumer.consume,
                    num_messages=self.batch_size,
                    timeout=self.batch_wait_ms / 1000,
                )
                if messages:
                    await self._handle(messages, stop)
        finally:
            done.set()
            await monitor  # it finishes the step in hand: the consumer is closed after it
            await asyncio.to_thread(self._close)

    async def _monitor(self, done: asyncio.Event) -> None:
        """Beside the batches (also while one waits for the graph): once a second the
        partition ends and the lag, every TOPIC_CHECK_SECONDS the topics, and the graph
        when no write has told whether it answers for that long."""
        checked = time.monotonic()
        probe: asyncio.Task[bool] | None = None  # beside the rounds: a hung one held them
        while not await stopped(done, 1.0):
            try:
                await asyncio.to_thread(self._report_lag)
                idle = time.monotonic() - self._graph_seen > TOPIC_CHECK_SECONDS
                if idle and not self._holding and (probe is None or probe.done()):
                    probe = asyncio.create_task(self._graph_answers())  # an idle graph can fail too
                if time.monotonic() - checked > TOPIC_CHECK_SECONDS:
                    checked = time.monotonic()
                    await asyncio.to_thread(self._check_topics)
            except Exception:
                log.exception("lineage consumer monitor")  # the next round tries again
        if probe is not None:
            probe.cancel()
            await asyncio.gather(probe, return_exceptions=True)

    async def _handle(self, messages: list[Any], stop: asyncio.Event) -> None:
        generation = self._topic_generation
        batch: list[tuple[Any, LineageEvent | JobRunEvent]] = []
        dead: list[DeadLetter] = []
        for m in messages:
            if m.error():
                log.warning("kafka: %s", m.error())
                continue
            self._positions.took(m.partition(), m.offset())
            try:
                batch.append((m, _decode(m.value() or b"")))
            except MalformedEvent as e:
                dead.append(DeadLetter(m, str(e)))
        refused = await self._write(batch, stop)
        if refused is None:
            return  # stopping before the batch was written: its offsets stay unstored
        dead += refused
        if dead and not await self._dlq.deliver(dead, stop):
            return  # stopping before the dead letters were delivered: the same
        if generation != self._topic_generation:
            return  # read from a topic since lost: its offsets mean nothing in the new one
        await asyncio.to_thread(self._store_and_commit, messages)

    async def _write(
        self, batch: list[tuple[Any, LineageEvent | JobRunEvent]], stop: asyncio.Event
    ) -> list[DeadLetter] | None:
        """Write the batch; what the graph refuses for good comes back as dead letters.
        None when stopped first (a write, probe or wait in hand ends): nothing is
        committed, a restart reads the batch again. A write that fails as unavailable
        (``consumer_graph.unavailable``) waits and retries the same chunk. After any
        other failure the graph is probed with a write (``ping``); if that fails too,
        the chunk waits the same way. If the graph takes the probe, the chunk was
        refused: it is halved until each refused event stands alone (one bad event costs
        O(log n) extra writes, the good ones land), and an event refused alone is written
        once more after a passing probe (a failure that cleared in between is not its
        own) before it is dead-lettered."""
        refused: list[DeadLetter] = []
        chunks = [batch] if batch else []
        delay = 0.1
        second_try = False  # the head chunk, alone, failed once with the graph answering
        while chunks:
            if stop.is_set():
                return None
            chunk = chunks[0]
            events = [e for _, e in chunk if isinstance(e, LineageEvent)]
            runs = [e for _, e in chunk if isinstance(e, JobRunEvent)]
            t0 = time.perf_counter()
            try:  # a stop cancels the write: a graph that stopped answering must not hold it
                await until_stopped(self._write_chunk(events, runs), stop)
            except Stopped:
                return None
            except Exception as failure:
                # The graph's word that it cannot take writes is trusted; another error is a
                # refusal only if a probe WRITE passes: a read probe passed on read-only, full
                # and forbidden graphs, whose valid events were all dead-lettered (s54 r3 #1).
                if stop.is_set():
                    return None
                down = unavailable(failure)
                try:
                    answering = not down and await until_stopped(self._graph_answers(), stop)
                except Stopped:
                    return None
                if not answering:
                    if down:
                        self._graph_state(False)
                    log.warning("graph unavailable (%s); retrying the same %d in %.1fs",
                                why(failure), len(chunk), delay)  # fmt: skip
                    self._holding = True  # the monitor's probe must not report it up meanwhile
                    held = await stopped(stop, delay)
                    self._holding = False
                    if held:
                        return None
                    delay = min(delay * 2, 5.0)
                    continue
                if len(chunk) > 1:
                    log.warning("graph refused a batch of %d (%s) and takes a probe; splitting it",
                                len(chunk), why(failure))  # fmt: skip
                    half = len(chunk) // 2
                    chunks[:1] = [chunk[:half], chunk[half:]]
                    continue
                if not second_try:
                    second_try = True
                    continue
                reason = f"graph refused the event: {type(failure).__name__}: {failure}"[:MAX_REASON]
                refused.append(DeadLetter(chunk[0][0], reason))
            else:
                self._graph_state(True)
                metrics.GRAPH_WRITE.observe(time.perf_counter() - t0)
                observe_event_to_graph(events, self.window_seconds)
                metrics.CONSUMED.labels("written").inc(len(chunk))
                self.written += len(chunk)
            chunks.pop(0)
            delay = 0.1
            second_try = False
        return refused

    async def _write_chunk(self, events: list[LineageEvent], runs: list[JobRunEvent]) -> None:
        if events:
            await self.graph.write_events(events)
        if runs:  # idempotent too: a retry after the events landed rewrites nothing
            await self.graph.write_runs(runs)

    async def _graph_answers(self) -> bool:
        try:
            await self.graph.ping()
        except Exception as e:
            log.debug("graph probe: %s", why(e))
            self._graph_state(False)
            return False
        self._graph_state(True)
        return True

    def _graph_state(self, up: bool) -> None:
        """``featurestore_lineage_graph_up{client="consumer"}`` (LineageGraphUnavailable):
        from every write that passes or fails as unavailable, and every probe (after a
        failed write; by the monitor while nothing is written or held)."""
        self._graph_seen = time.monotonic()
        metrics.GRAPH_UP.labels("consumer").set(1 if up else 0)

    def _subscribe(self) -> None:
        self._consumer.subscribe(
            [self.config.topic], on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_lost
        )

    def _check_topics(self) -> None:
        """Create missing topics. After the broker lost the events topic: count the
        events it took along unread and join the group again, so every partition is
        read from the start of the new topic. (Tansu also needs the new member: to a
        member that rejoins alone it hands the assignment it computed last, which is
        none when that was while the topic was missing.)"""
        with self._checking:
            lost = self._topics.check()
            if "dead_letters" in lost:
                log.error(
                    "dead-letter topic %s was lost by the broker, with its dead letters "
                    "(%d delivered there by this consumer so far)",
                    self.config.dead_letter_topic, self.dead_lettered,
                )  # fmt: skip
            if "events" not in lost:
                return
            unread = self._positions.unread()
            metrics.LOST_EVENTS.inc(unread)
            self.lost_events += unread
            log.error(
                "topic %s was lost by the broker, with %d events this consumer had not read; "
                "joining the group again to read the new topic from its start",
                self.config.topic, unread,
            )  # fmt: skip
            self._positions.clear()
            self._topic_generation += 1
            self._dropping = True
            self._consumer.unsubscribe()
            self._subscribe()

    def _store_and_commit(self, messages: list[Any]) -> None:
        from confluent_kafka import KafkaException

        for m in messages:
            if m.error():
                continue
            try:
                self._consumer.store_offsets(message=m)
            except KafkaException as e:
                # The partition went to another member (or with a lost topic) while the
                # batch was written: its next owner reads from the last commit again.
                log.debug("offset of %s/%d not stored: %s", m.topic(), m.partition(), e)
        self._commit()

    def _commit(self) -> None:
        """Commit the stored offsets: only batches already written. Never the offsets of
        a topic the broker lost: applied to the new topic, they would skip its first
        events."""
        from confluent_kafka import KafkaException

        if self._dropping:
            return
        try:
            self._consumer.commit(asynchronous=False)
        except KafkaException as e:  # e.g. nothing stored to commit
            log.debug("commit: %s", e)

    def _on_assign(self, _consumer: Any, partitions: list[Any]) -> None:
        self._assigned = list(partitions)
        self._dropping = False
        log.info("assigned partitions %s", [p.partition for p in partitions])

    def _on_revoke(self, _consumer: Any, partitions: list[Any]) -> None:
        log.info("revoking partitions %s", [p.partition for p in partitions])
        self._commit()
        self._positions.forget([tp.partition for tp in partitions])
        self._unassign(partitions)

    def _on_lost(self, _consumer: Any, partitions: list[Any]) -> None:
        """The session ended (the coordinator was gone too long): another member may own
        these partitions by now, so nothing is committed. Their read positions stay: if
        the broker died with the topic, the next check counts what it took along."""
        log.warning("lost partitions %s (group session ended)", [p.partition for p in partitions])
        self._unassign(partitions)

    def _unassign(self, partitions: list[Any]) -> None:
        with self._assignment:  # (a lag report in flight sets no lag of these after this)
            self._assigned = []
            metrics.forget_lag(tp.partition for tp in partitions)

    def _report_lag(self) -> None:
        """Lag per assigned partition: its end as the last fetch response gave it (the
        fetcher asks at least every fetch.wait.max.ms, 500 ms; no request of its own,
        and right on Tansu, whose ListOffsets(latest) is not) minus the group's committed
        offset. The ends also tell what a lost topic took along unread."""
        assigned = self._assigned
        if not assigned:
            return
        try:
            for tp in assigned:
                _, high = self._consumer.get_watermark_offsets(tp, cached=True)
                if high >= 0:  # a partition not fetched yet has no end
                    self._positions.saw_end(tp.partition, high)
            for tp in self._consumer.committed(assigned, timeout=2):
                end = self._positions.end(tp.partition)
                with self._assignment:  # still this member's (the broker answered meanwhile)
                    if end is not None and self._assigned is assigned:
                        metrics.CONSUMER_LAG.labels(str(tp.partition)).set(max(end - max(tp.offset, 0), 0))
        except Exception as e:
            log.debug("lag: %s", e)

    def _close(self) -> None:
        try:
            self._commit()
            self._consumer.close()
        finally:
            self._dlq.close()
            self._topics.close()


def _decode(raw: bytes) -> LineageEvent | JobRunEvent:
    """A message as an event or a run; MalformedEvent for anything that is neither. The
    decoders name what they know is wrong; whatever else a decoder raises on some input
    is still about that message (a process-wide problem would fail the next message as
    well), so it is dead-lettered with its name rather than ending the consumer and
    then, from the same uncommitted offset, every consumer restarted after it."""
    try:
        return decode_run(raw) if is_run(raw) else decode_event(raw)
    except MalformedEvent:
        raise
    except Exception as e:
        raise MalformedEvent(f"not decodable: {type(e).__name__}: {e}"[:MAX_REASON]) from None
