"""The lineage consumer against messages and graph states that once stopped it, on real
servers: Kafka protocol (Tansu) and Bolt (ArcadeDB). A poison message, a dead letter
too large for the broker, and a graph whose database is missing must neither crash the
consumer nor hold it on one batch, and valid events are never dead-lettered."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import msgspec
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from prometheus_client import REGISTRY

from lineage import metrics
from lineage.consumer import LineageConsumer
from lineage.graph.base import GraphUnavailable
from lineage.graph.bolt import BoltGraph
from lineage.graph.memory import InMemoryGraph
from tests.integration.test_lineage_pipeline import (
    consume_until,
    ev,
    new_consumer,
    produce,
    read_dead_letters,
)
from tests.servers import ArcadeServer, TansuBroker
from tests.support import eventually

# JSON nested 200,000 deep: 400 KB, under Kafka's 1 MB, and past msgspec's recursion limit.
DEEP = b'{"zz":' + b"[" * 200_000 + b"]" * 200_000 + b"}"


def produce_big(kafka: TansuBroker, topic: str, *values: bytes) -> None:
    """Raw messages, up to 2 MB each (the broker takes them; librdkafka's own limit is 1 MB)."""
    p = Producer({"bootstrap.servers": kafka.bootstrap, "message.max.bytes": 2_000_000})
    for v in values:
        p.produce(topic, key=b"raw", value=v)
    assert p.flush(10) == 0


def committed(kafka: TansuBroker, topic: str, group: str) -> int:
    c = Consumer({"bootstrap.servers": kafka.bootstrap, "group.id": group})
    try:
        [tp] = c.committed([TopicPartition(topic, 0)], timeout=10)
        return int(tp.offset)
    finally:
        c.close()


def outcome(name: str) -> float:
    return float(metrics.CONSUMED.labels(name)._value.get())


async def test_a_message_nested_too_deeply_is_dead_lettered_committed_and_passed(kafka: TansuBroker) -> None:
    """It raised RecursionError out of the decoder: the consumer crashed before the commit
    and, restarted, crashed again on the same offset; no later event reached the graph."""
    topic = f"lineage-{uuid.uuid4().hex[:6]}"
    await produce(kafka, topic, [ev(1)], partitions=1)
    produce_big(kafka, topic, DEEP, b'{"type": "job_run", "schema": ' + DEEP[6:])
    await produce(kafka, topic, [ev(2)], partitions=1)
    graph = InMemoryGraph()
    group = f"g-{uuid.uuid4().hex[:6]}"
    consumer = new_consumer(kafka, topic, graph, group)
    await consume_until(consumer, lambda: consumer.written >= 2 and consumer.dead_lettered >= 2)
    assert (consumer.written, consumer.dead_lettered) == (2, 2)
    assert [e.timestamp for e in await graph.events("user_profile:age", None, None, 10)] == [
        "2024-01-01T00:00:01Z",
        "2024-01-01T00:00:02Z",
    ]
    assert committed(kafka, topic, group) == 4  # past the poison: a restart does not meet it again
    reasons = {dict(m.headers())["reason"].decode() for m in read_dead_letters(kafka, topic, 2)}
    assert reasons == {
        "JSON nested too deeply to decode (maximum recursion depth exceeded while deserializing an object)"
    }


async def test_a_dead_letter_too_large_for_the_broker_is_sent_cut_and_the_consumer_goes_on(
    kafka: TansuBroker,
) -> None:
    """A malformed message near the size limit makes a dead letter over it (its value plus
    the reason and origin headers): refused for good, it was retried forever and nothing
    after it was consumed or committed."""
    topic = f"lineage-{uuid.uuid4().hex[:6]}"
    big = b'{"padding": "' + b"x" * (2**20 - 16) + b'"}'  # 1 MiB: with its headers over 1,048,588
    await produce(kafka, topic, [ev(1)], partitions=1)
    produce_big(kafka, topic, big)
    await produce(kafka, topic, [ev(2)], partitions=1)
    truncated0 = outcome("dead_letter_truncated")
    group = f"g-{uuid.uuid4().hex[:6]}"
    consumer = new_consumer(kafka, topic, InMemoryGraph(), group)
    await consume_until(consumer, lambda: consumer.written >= 2 and consumer.dead_lettered >= 1)
    assert (consumer.written, consumer.dead_lettered) == (2, 1)
    assert outcome("dead_letter_truncated") - truncated0 == 1
    assert committed(kafka, topic, group) == 3
    [dead] = read_dead_letters(kafka, topic, 1)
    headers = {k: v.decode() for k, v in dead.headers()}
    assert dead.value() == big[: 64 * 1024]
    assert headers["truncated"] == (
        f"the broker refused the whole message ({len(big)} bytes of value); the first 65536 kept"
    )
    assert "unknown field `padding`" in headers["reason"]
    assert headers["origin"] == f"{topic}/0/1"


async def test_a_missing_graph_database_is_the_graph_unavailable_not_a_refused_event(
    arcade: ArcadeServer,
) -> None:
    """Neo.ClientError.Database.DatabaseNotFound (a database dropped for a restore, or not
    created yet) went up as a refusal of the events: every valid event was dead-lettered."""
    missing = BoltGraph(arcade.uri, arcade.USER, arcade.PASSWORD, f"gone_{uuid.uuid4().hex[:6]}", retries=1)
    try:
        with pytest.raises(GraphUnavailable, match=r"Neo\.ClientError\.Database\.DatabaseNotFound"):
            await missing.write_events([ev(1)])
        with pytest.raises(GraphUnavailable):
            await missing.ping()
    finally:
        await missing.close()


async def test_a_consumer_waits_while_the_graph_database_is_missing_and_dead_letters_nothing(
    kafka: TansuBroker, arcade: ArcadeServer, graph: BoltGraph
) -> None:
    topic = f"lineage-{uuid.uuid4().hex[:6]}"
    await produce(kafka, topic, [ev(i) for i in range(5)], partitions=1)
    group = f"g-{uuid.uuid4().hex[:6]}"
    missing = BoltGraph(arcade.uri, arcade.USER, arcade.PASSWORD, f"gone_{uuid.uuid4().hex[:6]}", retries=1)
    waiting = new_consumer(kafka, topic, missing, group)
    stop = asyncio.Event()
    task = asyncio.create_task(waiting.run(stop))
    try:
        await eventually(lambda: waiting.written == 0 and _assigned(waiting), 30, "the consumer to start")
        await asyncio.sleep(3)  # batches retried against the missing database meanwhile
    finally:
        stop.set()
        await asyncio.wait_for(task, 15)
        await missing.close()
    assert (waiting.written, waiting.dead_lettered) == (0, 0)
    back = new_consumer(kafka, topic, graph, group)  # the database is there again
    await consume_until(back, lambda: back.written >= 5)
    assert [s.count for s in await graph.served_by("user_profile:age")] == [50]


def _assigned(consumer: LineageConsumer) -> bool:
    return bool(consumer._assigned)


class HiccupGraph(InMemoryGraph):
    """A graph that fails with an error the adapter does not know as its state (a
    RuntimeError) and fails its probe too, until it recovers."""

    def __init__(self) -> None:
        super().__init__()
        self.down = True
        self.failures = 0

    async def ping(self) -> None:
        if self.down:
            raise GraphUnavailable("not answering")

    async def write_events(self, events: Any) -> None:
        if self.down:
            self.failures += 1
            raise RuntimeError("server hiccup")
        await super().write_events(events)


async def test_an_event_refused_by_a_graph_that_fails_its_probe_waits_instead_of_being_dead_lettered(
    kafka: TansuBroker,
) -> None:
    topic = f"lineage-{uuid.uuid4().hex[:6]}"
    await produce(kafka, topic, [ev(1)], partitions=1)
    graph = HiccupGraph()
    consumer = new_consumer(kafka, topic, graph)
    stop = asyncio.Event()
    task = asyncio.create_task(consumer.run(stop))
    try:
        await eventually(lambda: graph.failures >= 3, 30, "writes retried while the probe fails")
        assert consumer.dead_lettered == 0
        graph.down = False
        await eventually(lambda: consumer.written >= 1, 30, "the event written once the graph answers")
    finally:
        stop.set()
        await asyncio.wait_for(task, 15)
    assert (consumer.written, consumer.dead_lettered) == (1, 0)


async def test_an_event_over_the_graphs_index_key_limit_is_dead_lettered_and_the_rest_of_its_batch_written(
    kafka: TansuBroker, graph: BoltGraph
) -> None:
    """ArcadeDB refuses a feature_id over its index page (256 KB) with its default code,
    Neo.DatabaseError.General.UnknownError: taken for the graph unavailable, the consumer
    retried the batch forever, writing, dead-lettering and committing nothing."""
    topic = f"lineage-{uuid.uuid4().hex[:6]}"
    big = msgspec.structs.replace(ev(2), feature_id="user_profile:" + "x" * 300_000)  # valid to the decoder
    await produce(kafka, topic, [ev(1), big, ev(3)], partitions=1)
    group = f"g-{uuid.uuid4().hex[:6]}"
    consumer = new_consumer(kafka, topic, graph, group)
    await consume_until(consumer, lambda: consumer.written >= 2 and consumer.dead_lettered >= 1, within=60)
    assert (consumer.written, consumer.dead_lettered) == (2, 1)
    assert [e.timestamp for e in await graph.events("user_profile:age", None, None, 10)] == [
        "2024-01-01T00:00:01Z",
        "2024-01-01T00:00:03Z",
    ]
    assert committed(kafka, topic, group) == 3
    [dead] = read_dead_letters(kafka, topic, 1)
    reason = dict(dead.headers())["reason"].decode()
    # ArcadeDB's message names the statement (or, in a write's transaction, the commit)
    # only; the cause ("Key size ... is too big to fit in a single page") is in its log
    assert reason.startswith(
        (
            "graph refused the event: DatabaseError: {neo4j_code: Neo.DatabaseError.",
            "graph refused the event: ClientError: {neo4j_code: Neo.ClientError.Transaction.",
        )
    ), reason
    assert REGISTRY.get_sample_value("featurestore_lineage_graph_up", {"client": "consumer"}) == 1


async def test_the_graph_probe_writes_one_node_in_place_so_a_graph_refusing_writes_fails_it(
    graph: BoltGraph,
) -> None:
    """The probe was ``RETURN 1``, which a graph that answers reads but refuses writes
    (read-only, disk full, a reader role) passes: every valid event was then taken for
    refused and dead-lettered (review 3 s54 #1). It writes now, one node, written over."""
    await graph.ping()
    await graph.ping()
    [row] = await graph._read("MATCH (p:LineageProbe) RETURN count(p) AS n, max(p.at) AS at")
    assert row["n"] == 1 and row["at"] > 1_700_000_000_000
    assert await graph.search("probe", 10) == []  # nothing the lineage API lists
