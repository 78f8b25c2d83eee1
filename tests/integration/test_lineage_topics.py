"""The lineage topics on a real broker (Tansu): a consumer started before its topic
exists, and a broker that dies and comes back empty under a running sink and consumer."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from confluent_kafka.admin import AdminClient
from prometheus_client import REGISTRY

from lineage import metrics
from lineage.consumer import LineageConsumer
from lineage.graph.bolt import BoltGraph
from lineage.kafka import KafkaSettings
from lineage.sinks import KafkaSink
from tests.integration.test_lineage_pipeline import ev, new_consumer
from tests.servers import ArcadeServer, TansuBroker
from tests.support import eventually


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


class GatedGraph(BoltGraph):
    """A real Bolt graph whose writes wait while the gate is closed, so the consumer
    holds a batch in hand and has not read what follows it."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.gate = asyncio.Event()
        self.gate.set()
        self.waiting = False

    async def write_events(self, events: Any) -> None:
        self.waiting = not self.gate.is_set()
        await self.gate.wait()
        self.waiting = False
        await super().write_events(events)


def lost(client: str, topic: str) -> float:
    return float(metrics.TOPIC_LOST.labels(client, topic)._value.get())


def delivered() -> float:
    return float(metrics.EVENTS.labels("delivered")._value.get())


async def test_a_broker_restarted_empty_costs_only_the_unread_events_and_both_sides_recover(
    arcade: ArcadeServer, graph: BoltGraph
) -> None:
    """Tansu keeps everything in memory: killed and started again it has no topics, no
    committed offsets and no producer ids. The events it had taken that the consumer
    had not read are gone, and counted; the server's sink and the consumer go on
    without a restart, and nothing sent after the loss is lost."""
    broker = TansuBroker().start()
    topic = f"lineage-{uuid.uuid4().hex[:6]}"
    settings = KafkaSettings(
        bootstrap_servers=broker.bootstrap, topic=topic, partitions=1, group_id=f"g-{uuid.uuid4().hex[:6]}",
        session_timeout_ms=2000,
    )  # fmt: skip
    gated = GatedGraph(arcade.uri, arcade.USER, arcade.PASSWORD, arcade.DATABASE)
    consumer = LineageConsumer(settings, gated, batch_size=10, batch_wait_ms=100)
    sink = KafkaSink(settings, linger_ms=1)
    stop = asyncio.Event()
    task = asyncio.create_task(consumer.run(stop))
    before = {(c, t): lost(c, t) for c in ("sink", "consumer") for t in ("events", "dead_letters")}
    lost_events0 = metrics.LOST_EVENTS._value.get()
    await sink.start()
    try:
        await sink.send([ev(i, "before:read") for i in range(20)])
        await eventually(lambda: consumer.written >= 20, 30, "the first events in the graph")
        gated.gate.clear()
        delivered0 = delivered()
        await sink.send([ev(i, "before:unread") for i in range(30)])
        await eventually(lambda: delivered() - delivered0 >= 30, 30, "the next events delivered")
        # the consumer holds 10 of them in hand, and its fetches have seen the other 20
        await eventually(lambda: gated.waiting, 30, "a batch waiting for the graph")
        lag = metrics.CONSUMER_LAG.labels("0")
        await eventually(lambda: lag._value.get() == 50 - 20, 30, "the consumer to see the partition's end")

        broker.kill()
        await sink.send([ev(i, "while:down") for i in range(5)])
        broker.start()
        await eventually(lambda: consumer.lost_events >= 20, 30, "the consumer to count the lost events")
        gated.gate.set()
        await sink.send([ev(i, "after:restart") for i in range(5)])
        await eventually(
            lambda: consumer.written >= 20 + 10 + 5 + 5, 60, "the events sent since in the graph"
        )
    finally:
        gated.gate.set()
        stop.set()
        await task
        await sink.close()
        await gated.close()
        broker.stop()
    # its partition given up as it stopped: its lag is another member's to report
    assert REGISTRY.get_sample_value("featurestore_lineage_consumer_lag_messages", {"partition": "0"}) is None

    assert consumer.lost_events == 20 and metrics.LOST_EVENTS._value.get() - lost_events0 == 20
    assert {k: lost(*k) - v for k, v in before.items()} == {
        ("sink", "events"): 1, ("sink", "dead_letters"): 0,
        ("consumer", "events"): 1, ("consumer", "dead_letters"): 1,
    }  # fmt: skip
    counts = {
        f: len(await graph.events(f, None, None, 100))
        for f in ("before:read", "before:unread", "while:down", "after:restart")
    }
    assert counts == {"before:read": 20, "before:unread": 10, "while:down": 5, "after:restart": 5}
