"""The lineage pipeline on real servers: Kafka protocol (Tansu broker) and Bolt/Cypher
(ArcadeDB): sink -> topic -> consumer group -> graph, with replay, dead letters,
rebalancing and a broker outage."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from confluent_kafka import Consumer, Producer

from lineage import metrics
from lineage.consumer import ConsumerConfig, LineageConsumer
from lineage.events import LineageEvent
from lineage.graph.bolt import BoltGraph
from lineage.sinks import KafkaSink, KafkaSinkConfig
from tests.servers import ArcadeServer, TansuBroker
from tests.support import eventually, free_port

pytestmark = pytest.mark.integration


def ev(i: int, feature: str = "user_profile:age", count: int = 10) -> LineageEvent:
    return LineageEvent(
        feature_id=feature, feature_version=1, source_table="redis://fs/demo/user_profile",
        timestamp=f"2024-01-01T00:{i // 60:02d}:{i % 60:02d}Z", upstream_deps=["warehouse.users"],
        registry_version=1, served_count=count, trace_ids=[], service="fs@test",
    )  # fmt: skip


@pytest.fixture
async def graph(arcade: ArcadeServer) -> AsyncIterator[BoltGraph]:
    arcade.wipe()
    g = BoltGraph(arcade.uri, arcade.USER, arcade.PASSWORD, arcade.DATABASE)
    await g.start()
    yield g
    await g.close()


def consumer_config(kafka: TansuBroker, topic: str, group: str | None = None) -> ConsumerConfig:
    return ConsumerConfig(
        bootstrap_servers=kafka.bootstrap, topic=topic, group_id=group or f"g-{uuid.uuid4().hex[:6]}",
        dead_letter_topic=f"{topic}.dlq", batch_size=100, batch_wait_ms=100,
        session_timeout_ms=2000, heartbeat_interval_ms=400,
    )  # fmt: skip


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
        KafkaSinkConfig(bootstrap_servers=kafka.bootstrap, topic=topic, partitions=partitions, linger_ms=1)
    )
    await sink.start()
    await sink.send(events)
    await asyncio.to_thread(sink._producer.flush, 10)
    await sink.close()
    return sink


async def test_events_reach_the_graph_once_even_when_replayed(kafka: TansuBroker, graph: BoltGraph) -> None:
    topic = f"lineage-{uuid.uuid4().hex[:6]}"
    delivered0 = metrics.EVENTS.labels("delivered")._value.get()
    await produce(kafka, topic, [ev(i) for i in range(50)])
    assert metrics.EVENTS.labels("delivered")._value.get() - delivered0 == 50
    first = LineageConsumer(consumer_config(kafka, topic), graph)
    await consume_until(first, lambda: first.written >= 50)
    served = await graph.served_by("user_profile:age")
    assert [(s.server, s.count) for s in served] == [("fs@test", 500)]
    assert [t.name for t in await graph.produced_by("user_profile:age") if t.role == "online"] == [
        "redis://fs/demo/user_profile"
    ]
    # a second group reads everything again: idempotent MERGEs, nothing doubles
    replay = LineageConsumer(consumer_config(kafka, topic), graph)
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
    consumer = LineageConsumer(consumer_config(kafka, topic), graph)
    await consume_until(consumer, lambda: consumer.written >= 2 and consumer.dead_lettered >= 2)
    assert consumer.written == 2 and consumer.dead_lettered == 2
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
        if len(got) == 2:
            break
    dlq.close()
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
    a = LineageConsumer(consumer_config(kafka, topic, group), graph)
    b = LineageConsumer(consumer_config(kafka, topic, group), graph)
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
        KafkaSinkConfig(
            bootstrap_servers=broker.bootstrap, topic=topic, partitions=1, buffer_messages=20, linger_ms=1
        )
    )
    await sink.start()
    try:
        await sink.send([ev(0)])
        await asyncio.to_thread(sink._producer.flush, 10)
        broker.pause()
        full0 = metrics.BROKEN.labels("sink_buffer_full")._value.get()
        t0 = asyncio.get_running_loop().time()
        await sink.send([ev(i) for i in range(1, 51)])  # never blocks, never raises
        assert asyncio.get_running_loop().time() - t0 < 1.0
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
    first = LineageConsumer(consumer_config(kafka, topic, group), down)
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
    second = LineageConsumer(consumer_config(kafka, topic, group), graph)
    await consume_until(second, lambda: second.written >= 20)
    assert [s.count for s in await graph.served_by("user_profile:age")] == [200]
