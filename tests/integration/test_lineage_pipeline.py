"""The lineage pipeline on real servers: Kafka protocol (Tansu broker) and Bolt/Cypher
(ArcadeDB): sink -> topic -> consumer group -> graph, with replay, dead letters,
rebalancing and a broker outage."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from confluent_kafka import Consumer, KafkaError, Producer
from confluent_kafka.admin import AdminClient
from msgspec.structs import replace

from lineage import metrics
from lineage.consumer import LineageConsumer
from lineage.events import LineageEvent, encode_event
from lineage.graph.bolt import BoltGraph
from lineage.kafka import KafkaSettings
from lineage.sinks import KafkaSink
from tests.servers import ArcadeServer, TansuBroker
from tests.support import eventually, free_port


def ev(i: int, feature: str = "user_profile:age", count: int = 10) -> LineageEvent:
    return LineageEvent(
        feature_id=feature, feature_version=1, source_table="redis://fs/demo/user_profile",
        timestamp=f"2024-01-01T00:{i // 60:02d}:{i % 60:02d}Z", upstream_deps=["warehouse.users"],
        registry_version=1, served_count=count, trace_ids=[], service="fs@test",
    )  # fmt: skip


def new_consumer(
    kafka: TansuBroker, topic: str, graph: Any, group: str | None = None, session_timeout_ms: int = 2000
) -> LineageConsumer:
    settings = KafkaSettings(
        bootstrap_servers=kafka.bootstrap, topic=topic, group_id=group or f"g-{uuid.uuid4().hex[:6]}",
        session_timeout_ms=session_timeout_ms,  # Tansu: group joins take about half of it
    )  # fmt: skip
    return LineageConsumer(settings, graph, batch_size=100, batch_wait_ms=100)


async def consume_until(consumer: LineageConsumer, done: Any, within: float = 30) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(consumer.run(stop))
    try:
        await eventually(done, within, "the consumer to catch up")
    finally:
        stop.set()
        await task


async def produce(
    kafka: TansuBroker, topic: str, events: list[LineageEvent], partitions: int = 3
) -> KafkaSink:
    sink = KafkaSink(
        KafkaSettings(bootstrap_servers=kafka.bootstrap, topic=topic, partitions=partitions), linger_ms=1
    )
    await sink.start()
    await sink.send(events)
    await asyncio.to_thread(sink._producer.flush, 10)
    await sink.close()
    return sink


def read_dead_letters(kafka: TansuBroker, topic: str, n: int) -> list[Any]:
    """The first ``n`` messages of the topic's dead-letter topic (fewer if it has fewer)."""
    dlq = Consumer(
        {
            "bootstrap.servers": kafka.bootstrap,
            "group.id": f"d-{uuid.uuid4().hex[:6]}",
            "auto.offset.reset": "earliest",
            "session.timeout.ms": 2000,
            "heartbeat.interval.ms": 400,
        }
    )
    dlq.subscribe([f"{topic}.dlq"])
    got: list[Any] = []
    for _ in range(60):
        m = dlq.poll(0.5)
        if m is not None and not m.error():
            got.append(m)
        if len(got) == n:
            break
    dlq.close()
    return got


def produce_raw(kafka: TansuBroker, topic: str, *values: bytes) -> None:
    p = Producer({"bootstrap.servers": kafka.bootstrap})
    for v in values:
        p.produce(topic, key=b"raw", value=v)
    assert p.flush(10) == 0


async def test_events_reach_the_graph_once_even_when_replayed(kafka: TansuBroker, graph: BoltGraph) -> None:
    topic = f"lineage-{uuid.uuid4().hex[:6]}"
    delivered0 = metrics.EVENTS.labels("delivered")._value.get()
    await produce(kafka, topic, [ev(i) for i in range(50)])
    assert metrics.EVENTS.labels("delivered")._value.get() - delivered0 == 50
    first = new_consumer(kafka, topic, graph)
    await consume_until(first, lambda: first.written >= 50)
    served = await graph.served_by("user_profile:age")
    assert [(s.server, s.count) for s in served] == [("fs@test", 500)]
    assert [t.name for t in await graph.produced_by("user_profile:age") if t.role == "online"] == [
        "redis://fs/demo/user_profile"
    ]
    # a second group reads everything again: idempotent MERGEs, nothing doubles
    replay = new_consumer(kafka, topic, graph)
    await consume_until(replay, lambda: replay.written >= 50)
    assert [s.count for s in await graph.served_by("user_profile:age")] == [500]
    assert len(await graph.events("user_profile:age", None, None, 1000)) == 50


async def test_a_malformed_message_is_dead_lettered_and_the_consumer_goes_on(
    kafka: TansuBroker, graph: BoltGraph
) -> None:
    topic = f"lineage-{uuid.uuid4().hex[:6]}"
    await produce(kafka, topic, [ev(1)], partitions=1)
    p = Producer({"bootstrap.servers": kafka.bootstrap})
    p.produce(topic, key=b"x", value=b'{"feature_id": "oops"}')
    p.produce(topic, key=b"y", value=b"\x00not json")
    p.flush(10)
    await produce(kafka, topic, [ev(2)], partitions=1)
    consumer = new_consumer(kafka, topic, graph)
    await consume_until(consumer, lambda: consumer.written >= 2 and consumer.dead_lettered >= 2)
    assert consumer.written == 2 and consumer.dead_lettered == 2
    got = read_dead_letters(kafka, topic, 2)
    reasons = sorted(dict(m.headers())["reason"].decode() for m in got)
    assert len(reasons) == 2
    assert any("missing required field" in r for r in reasons) and any(
        "malformed" in r.lower() for r in reasons
    )
    assert all(dict(m.headers())["origin"].decode().startswith(f"{topic}/") for m in got)


async def test_two_consumers_split_the_partitions_without_duplicates(
    kafka: TansuBroker, graph: BoltGraph
) -> None:
    topic = f"lineage-{uuid.uuid4().hex[:6]}"
    features = [f"v:f{i}" for i in range(8)]
    await produce(kafka, topic, [ev(i, features[i % 8], count=1) for i in range(160)], partitions=4)
    group = f"g-{uuid.uuid4().hex[:6]}"
    # 10 s, as in production: a 2 s session can expire on the loaded CI machine (a rebalance)
    a = new_consumer(kafka, topic, graph, group, session_timeout_ms=10_000)
    b = new_consumer(kafka, topic, graph, group, session_timeout_ms=10_000)
    stop = asyncio.Event()
    tasks = [asyncio.create_task(a.run(stop)), asyncio.create_task(b.run(stop))]
    try:
        await eventually(lambda: a.written + b.written >= 160, 40, "both consumers to finish")
    finally:
        stop.set()
        await asyncio.gather(*tasks)
    assert a.written + b.written == 160
    counts = [sum(s.count for s in await graph.served_by(f)) for f in features]
    assert counts == [20] * 8


async def test_kafka_outage_buffers_counts_and_recovers(tmp_path: Any) -> None:
    broker = TansuBroker().start()
    topic = f"lineage-{uuid.uuid4().hex[:6]}"
    sink = KafkaSink(
        KafkaSettings(bootstrap_servers=broker.bootstrap, topic=topic, partitions=1, buffer_messages=20),
        linger_ms=1,
    )
    await sink.start()
    try:
        await sink.send([ev(0)])
        await asyncio.to_thread(sink._producer.flush, 10)
        broker.pause()
        full0 = metrics.BROKEN.labels("sink_buffer_full")._value.get()
        # never blocks, never raises: the send completes without once yielding to the
        # loop, so it cannot be waiting on the frozen broker
        sending = sink.send([ev(i) for i in range(1, 51)])
        with pytest.raises(StopIteration):
            sending.send(None)
        assert (
            metrics.BROKEN.labels("sink_buffer_full")._value.get() - full0 == 30 * 10
        )  # 20 buffered, 30 counted
        broker.resume()
        delivered0 = metrics.EVENTS.labels("delivered")._value.get()
        await eventually(
            lambda: metrics.EVENTS.labels("delivered")._value.get() - delivered0 >= 20,
            40,
            "buffered events delivered",
        )
        await sink.send([ev(99)])
        await eventually(
            lambda: metrics.SINK_UP.labels("kafka")._value.get() == 1, 20, "the sink to report up"
        )
    finally:
        await sink.close()
        broker.stop()


class CountingGraph(BoltGraph):
    """A Bolt graph whose server is not there (nothing listens on its port)."""

    attempts = 0

    async def write_events(self, events: Any) -> None:
        self.attempts += 1
        await super().write_events(events)


async def test_a_consumer_stopped_during_a_graph_outage_leaves_its_batch_to_the_group(
    kafka: TansuBroker, graph: BoltGraph
) -> None:
    topic = f"lineage-{uuid.uuid4().hex[:6]}"
    await produce(kafka, topic, [ev(i) for i in range(20)], partitions=1)
    group = f"g-{uuid.uuid4().hex[:6]}"
    down = CountingGraph(f"bolt://127.0.0.1:{free_port()}", "root", "none", retries=1)
    first = new_consumer(kafka, topic, down, group)
    stop = asyncio.Event()
    task = asyncio.create_task(first.run(stop))
    try:
        await eventually(lambda: down.attempts >= 2, 30, "writes retried against the missing graph")
    finally:
        stop.set()
        await asyncio.wait_for(task, 15)  # stops although the graph never came back
        await down.close()
    assert first.written == 0
    # the same group resumes where the committed offsets say: nothing was committed
    second = new_consumer(kafka, topic, graph, group)
    await consume_until(second, lambda: second.written >= 20)
    assert [s.count for s in await graph.served_by("user_profile:age")] == [200]


async def test_a_bad_timestamp_is_dead_lettered_and_the_next_event_still_arrives(
    kafka: TansuBroker, graph: BoltGraph
) -> None:
    """An event whose timestamp cannot be read used to pass decoding and fail every
    write of its batch, retried forever: the partition stalled behind it."""
    topic = f"lineage-{uuid.uuid4().hex[:6]}"
    produce_raw(kafka, topic, encode_event(ev(1)).replace(b"2024-01-01T00:00:01Z", b"sometime in 2024"))
    await produce(kafka, topic, [ev(2)], partitions=1)
    consumer = new_consumer(kafka, topic, graph)
    await consume_until(consumer, lambda: consumer.written >= 1 and consumer.dead_lettered >= 1)
    assert (consumer.written, consumer.dead_lettered) == (1, 1)
    [stamp] = [e.timestamp for e in await graph.events("user_profile:age", None, None, 10)]
    assert stamp == "2024-01-01T00:00:02Z"
    [dead] = read_dead_letters(kafka, topic, 1)
    assert "timestamp 'sometime in 2024'" in dict(dead.headers())["reason"].decode()


class PickyGraph(BoltGraph):
    """A real Bolt graph that refuses one feature for good, as a server does with a
    value it cannot store: the same write fails however often it is retried."""

    async def write_events(self, events: Any) -> None:
        if any(e.feature_id == "bad:event" for e in events):
            raise ValueError("cannot store bad:event")
        await super().write_events(events)


async def test_an_event_the_graph_refuses_is_dead_lettered_alone(
    kafka: TansuBroker, arcade: ArcadeServer, graph: BoltGraph
) -> None:
    topic = f"lineage-{uuid.uuid4().hex[:6]}"
    events = [ev(i) for i in range(10)]
    events[6] = replace(events[6], feature_id="bad:event")
    await produce(kafka, topic, events, partitions=1)
    picky = PickyGraph(arcade.uri, arcade.USER, arcade.PASSWORD, arcade.DATABASE)
    consumer = new_consumer(kafka, topic, picky)
    try:
        await consume_until(consumer, lambda: consumer.written >= 9 and consumer.dead_lettered >= 1)
    finally:
        await picky.close()
    assert (consumer.written, consumer.dead_lettered) == (9, 1)
    assert [s.count for s in await graph.served_by("user_profile:age")] == [90]
    [dead] = read_dead_letters(kafka, topic, 1)
    assert dead.key() == b"bad:event"
    assert (
        dict(dead.headers())["reason"].decode()
        == "graph refused the event: ValueError: cannot store bad:event"
    )


async def test_the_dead_letter_topic_exists_before_the_first_dead_letter(
    kafka: TansuBroker, graph: BoltGraph
) -> None:
    """Created at start, like the sink creates its topic: a broker that does not create
    topics on demand must not hold the first dead letter (and its batch) hostage."""
    topic = f"lineage-{uuid.uuid4().hex[:6]}"
    await produce(kafka, topic, [ev(1)], partitions=1)
    consumer = new_consumer(kafka, topic, graph)
    await consume_until(consumer, lambda: consumer.written >= 1)
    assert consumer.dead_lettered == 0
    topics = AdminClient({"bootstrap.servers": kafka.bootstrap}).list_topics(timeout=5).topics
    assert f"{topic}.dlq" in topics and len(topics[f"{topic}.dlq"].partitions) == 1


class PausingGraph(BoltGraph):
    """A real Bolt graph whose first write freezes the Kafka broker: the batch reaches
    the graph, then its dead letter finds no broker to take it."""

    def __init__(self, broker: TansuBroker, *args: Any) -> None:
        super().__init__(*args)
        self.broker = broker

    async def write_events(self, events: Any) -> None:
        await super().write_events(events)
        self.broker.pause()


async def test_an_undeliverable_dead_letter_is_retried_not_raised(
    arcade: ArcadeServer, graph: BoltGraph
) -> None:
    """Dead letters that cannot be delivered used to raise out of run() (a crash loop
    when the topic is missing). Now the consumer keeps the batch and retries until the
    dead letter is delivered."""
    broker = TansuBroker().start()
    topic = f"lineage-{uuid.uuid4().hex[:6]}"
    pausing = PausingGraph(broker, arcade.uri, arcade.USER, arcade.PASSWORD, arcade.DATABASE)
    consumer = new_consumer(broker, topic, pausing)
    stop = asyncio.Event()
    task: asyncio.Task[None] | None = None
    try:
        produce_raw(broker, topic, b"\x00not json")
        await produce(broker, topic, [ev(1)], partitions=1)
        task = asyncio.create_task(consumer.run(stop))
        await eventually(lambda: consumer.dead_letter_failures >= 2, 60, "dead-letter delivery retried")
        assert not task.done() and consumer.dead_lettered == 0
        broker.resume()
        await eventually(lambda: consumer.dead_lettered >= 1, 60, "the dead letter delivered")
        stop.set()
        await task  # run() returns normally
        assert (consumer.written, consumer.dead_lettered) == (1, 1)
        [dead] = read_dead_letters(broker, topic, 1)
        assert dead.value() == b"\x00not json"
    finally:
        stop.set()
        broker.resume()
        if task is not None and not task.done():
            await asyncio.wait_for(task, 30)
        await pausing.close()
        broker.stop()


def unit_counts() -> tuple[float, float, float]:
    return (
        metrics.BROKEN.labels("undelivered")._value.get(),
        metrics.EVENTS.labels("failed")._value.get(),
        metrics.EVENTS.labels("delivered")._value.get(),
    )


async def test_an_event_the_producer_refuses_costs_only_itself(kafka: TansuBroker) -> None:
    """One event over the broker's message size in the middle of a batch: the events
    around it are delivered and only its own served values count as broken."""
    topic = f"lineage-{uuid.uuid4().hex[:6]}"
    sink = KafkaSink(KafkaSettings(bootstrap_servers=kafka.bootstrap, topic=topic, partitions=1), linger_ms=1)
    await sink.start()
    broken0, failed0, delivered0 = unit_counts()
    try:
        huge = replace(ev(2, count=7), trace_ids=["x" * 2_000_000])
        await sink.send([ev(1, count=3), huge, ev(3, count=5)])  # does not raise
        await eventually(lambda: unit_counts()[2] - delivered0 >= 2, 20, "the other two delivered")
    finally:
        await sink.close()
    broken, failed, delivered = unit_counts()
    assert (broken - broken0, failed - failed0, delivered - delivered0) == (7, 1, 2)


async def test_a_fatally_failed_producer_is_replaced(kafka: TansuBroker) -> None:
    """librdkafka reports a fatal error (e.g. an idempotence violation) through the
    error callback; from then on that producer refuses everything. The sink starts a
    new one, and events flow again."""
    topic = f"lineage-{uuid.uuid4().hex[:6]}"
    sink = KafkaSink(KafkaSettings(bootstrap_servers=kafka.bootstrap, topic=topic, partitions=1), linger_ms=1)
    await sink.start()
    try:
        await sink.send([ev(1)])
        await asyncio.to_thread(sink._producer.flush, 10)
        first = sink._producer
        sink._on_error(KafkaError(KafkaError._FATAL, "idempotence violated (test)", fatal=True))
        _, _, delivered0 = unit_counts()
        await sink.send([ev(2)])
        assert sink._producer is not first
        await eventually(lambda: unit_counts()[2] - delivered0 >= 1, 20, "delivery by the new producer")
    finally:
        await sink.close()


async def test_closing_with_kafka_down_counts_the_buffered_events() -> None:
    broker = TansuBroker().start()
    topic = f"lineage-{uuid.uuid4().hex[:6]}"
    sink = KafkaSink(
        KafkaSettings(bootstrap_servers=broker.bootstrap, topic=topic, partitions=1),
        linger_ms=1,
        close_seconds=0.5,
    )
    await sink.start()
    try:
        await sink.send([ev(0)])
        await asyncio.to_thread(sink._producer.flush, 10)
        broker.pause()
        broken0, failed0, _ = unit_counts()
        await sink.send([ev(i, count=i) for i in range(1, 11)])
        await sink.close()
        broken, failed, _ = unit_counts()
        assert (broken - broken0, failed - failed0) == (sum(range(1, 11)), 10)
    finally:
        broker.stop()


async def test_the_sink_up_gauge_follows_the_broker_without_traffic() -> None:
    """What LineageSinkDown alerts on: 1 for an idle sink whose broker answers, 0 soon
    after the broker stops answering (long before buffered events would expire)."""
    broker = TansuBroker().start()
    up = metrics.SINK_UP.labels("kafka")
    sink = KafkaSink(
        KafkaSettings(bootstrap_servers=broker.bootstrap, topic=f"lineage-{uuid.uuid4().hex[:6]}")
    )
    await sink.start()
    try:
        await eventually(lambda: up._value.get() == 1, 20, "an idle sink to report up")
        broker.pause()
        await eventually(lambda: up._value.get() == 0, 30, "the sink to report the broker down")
        broker.resume()
        await eventually(lambda: up._value.get() == 1, 30, "the sink to report up again")
    finally:
        broker.resume()
        await sink.close()
        broker.stop()


async def test_job_runs_travel_the_lineage_topic_to_the_graph_beside_served_events(
    kafka: TansuBroker, graph: BoltGraph
) -> None:
    from lineage.runs import DataVersion, RunRecorder

    topic = f"lineage-{uuid.uuid4().hex[:6]}"
    sink = KafkaSink(KafkaSettings(bootstrap_servers=kafka.bootstrap, topic=topic, partitions=3), linger_ms=1)
    await sink.start()
    recorder = RunRecorder(sink)
    run = await recorder.started(
        "stream:clicks_5m",
        inputs=["kafka://clicks"],
        outputs=["redis://fs/demo/user_activity"],
        view="user_activity",
    )
    await sink.send([ev(1, "user_activity:clicks_7d")])
    published = DataVersion(
        view="user_activity",
        version=7,
        rows=42,
        published_at="2024-01-01T00:05:00Z",
        fingerprint="offsets:0-41",
    )
    await recorder.finished(run, rows_read=42, rows_written=42, data_version=published)
    produce_raw(kafka, topic, b'{"type": "job_run", "job": "x"}')  # malformed: dead-lettered, not written
    await asyncio.to_thread(sink._producer.flush, 10)
    await sink.close()
    consumer = new_consumer(kafka, topic, graph)
    await consume_until(consumer, lambda: consumer.written >= 3)
    [change] = await graph.changes(None, "kafka://clicks", None, 10)
    assert (change.kind, change.run_id, change.data_version, change.rows) == (
        "data_version", run.run_id, "user_activity@7", 42,
    )  # fmt: skip
    [node] = await graph.nodes([f"run:{run.run_id}"])
    assert node.attributes["state"] == "COMPLETE" and node.attributes["job"] == "stream:clicks_5m"
    assert [s.count for s in await graph.served_by("user_activity:clicks_7d")] == [10]
    [dead] = read_dead_letters(kafka, topic, 1)
    assert b"job_run" in dead.value()
