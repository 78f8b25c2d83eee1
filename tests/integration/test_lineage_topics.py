"""The lineage topics on a real broker (Tansu): a consumer started before its topic
exists, and a broker that dies and comes back empty under a running sink and consumer."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
from confluent_kafka.admin import AdminClient

from lineage import metrics
from lineage.graph.bolt import BoltGraph
from lineage.kafka import KafkaSettings
from lineage.sinks import KafkaSink
from tests.integration.test_lineage_pipeline import ev, new_consumer
from tests.servers import ArcadeServer, TansuBroker
from tests.support import eventually


@pytest.fixture
async def graph(arcade: ArcadeServer) -> AsyncIterator[BoltGraph]:
    arcade.wipe()
    g = BoltGraph(arcade.uri, arcade.USER, arcade.PASSWORD, arcade.DATABASE)
    await g.start()
    yield g
    await g.close()


def partitions(broker: TansuBroker, topic: str) -> int | None:
    """The topic's partition count, None while it does not exist."""
    topics = AdminClient({"bootstrap.servers": broker.bootstrap}).list_topics(timeout=5).topics
    return len(topics[topic].partitions) if topic in topics else None


async def test_a_consumer_started_before_its_topic_exists_reads_what_is_produced_later(
    kafka: TansuBroker, graph: BoltGraph
) -> None:
    """It used to log UNKNOWN_TOPIC_OR_PART once and then read nothing for librdkafka's
    topic metadata refresh interval (5 minutes), and the producer created the topic
    with the broker's default partition count (Tansu: 4) instead of the configured one."""
    topic = f"lineage-{uuid.uuid4().hex[:6]}"
    assert partitions(kafka, topic) is None
    # The production session timeout: Tansu then takes about 5 s to form the group.
    consumer = new_consumer(kafka, topic, graph, session_timeout_ms=10_000)
    stop = asyncio.Event()
    task = asyncio.create_task(consumer.run(stop))
    sink = KafkaSink(consumer.config, linger_ms=1)  # the same lineage.kafka settings
    try:
        # the consumer makes its dead-letter topic right before it subscribes
        await eventually(lambda: partitions(kafka, f"{topic}.dlq"), 20, "the consumer to start")
        await sink.start()
        await sink.send([ev(i) for i in range(10)])
        await eventually(lambda: consumer.written >= 10, 30, "the events in the graph")
    finally:
        stop.set()
        await task
        await sink.close()
    assert partitions(kafka, topic) == consumer.config.partitions == 6
    assert len(await graph.events("user_profile:age", None, None, 100)) == 10


async def test_the_sink_creates_its_topic_with_the_configured_partitions(kafka: TansuBroker) -> None:
    """Events sent right at start used to make the producer ask the broker to create the
    topic, with the broker's default partition count, before the sink's own creation."""
    settings = KafkaSettings(
        bootstrap_servers=kafka.bootstrap, topic=f"lineage-{uuid.uuid4().hex[:6]}", partitions=3
    )
    sink = KafkaSink(settings, linger_ms=1)
    delivered0 = metrics.EVENTS.labels("delivered")._value.get()
    await sink.start()
    try:
        await sink.send([ev(i) for i in range(5)])
        await eventually(
            lambda: metrics.EVENTS.labels("delivered")._value.get() - delivered0 >= 5,
            30,
            "the events delivered",
        )
    finally:
        await sink.close()
    assert partitions(kafka, settings.topic) == 3
