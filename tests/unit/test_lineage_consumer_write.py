"""How the lineage consumer's batch write tells a graph that cannot take writes now from
an event the graph refuses, and how promptly it stops (review 3 s54 #1, #2, #5).

The graphs here are stubs: what is tested is the consumer's reading of the errors and
probes a graph gives (lineage/consumer.py ``_write``), not a server. Real servers:
tests/integration/test_lineage_consumer_faults.py (ArcadeDB refusing an event, a
missing database) and ``BoltGraph.ping`` being a write there too."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client import REGISTRY

from featurestore.cli.lineage import start_graph
from lineage.consumer import LineageConsumer
from lineage.events import LineageEvent
from lineage.graph.base import GraphUnavailable
from lineage.graph.memory import InMemoryGraph
from lineage.kafka import KafkaSettings
from lineage.runs import JobRunEvent

pytest.importorskip("confluent_kafka")


def ev(i: int) -> LineageEvent:
    return LineageEvent(
        feature_id="user_profile:age", feature_version=1, source_table="redis://fs/demo/user_profile",
        timestamp=f"2024-01-01T{i // 3600:02d}:{i // 60 % 60:02d}:{i % 60:02d}Z", upstream_deps=[],
        registry_version=1, served_count=1, trace_ids=[], service="fs@test",
    )  # fmt: skip


class Message:
    """What ``_write`` needs of a Kafka message: the dead letter's origin."""

    def __init__(self, offset: int) -> None:
        self._offset = offset

    def key(self) -> bytes:
        return b"user_profile:age"

    def value(self) -> bytes:
        return b"{}"

    def topic(self) -> str:
        return "feature-lineage-v1"

    def partition(self) -> int:
        return 0

    def offset(self) -> int:
        return self._offset


def batch(n: int) -> list[tuple[Any, LineageEvent | JobRunEvent]]:
    return [(Message(i), ev(i)) for i in range(n)]


CONSUMERS: list[LineageConsumer] = []


@pytest.fixture(autouse=True)
def _close_consumers() -> Iterator[None]:
    yield
    while CONSUMERS:
        CONSUMERS.pop()._close()


def consumer(graph: Any) -> LineageConsumer:
    # Only ``_write`` runs: nothing here needs the broker (127.0.0.1:1 refuses at once).
    c = LineageConsumer(KafkaSettings(bootstrap_servers="127.0.0.1:1"), graph)
    CONSUMERS.append(c)
    return c


def graph_up() -> float | None:
    return REGISTRY.get_sample_value("featurestore_lineage_graph_up", {"client": "consumer"})


class ReadOnlyGraph(InMemoryGraph):
    """A graph that refuses writes while it answers reads: Neo4j read-only, a reader
    role (Forbidden) or a follower, which BoltGraph raises as GraphUnavailable. Its
    ``ping`` passes, as the read probe (``RETURN 1``) used to on such a graph; BoltGraph's
    probe is now a write and would fail too, but the consumer must hold the batch on the
    write's error alone."""

    def __init__(self, refusals: int) -> None:
        super().__init__()
        self.refusals = refusals  # writes refused before it takes writes again
        self.writes = 0

    async def write_events(self, events: Any) -> None:
        self.writes += 1
        if self.writes <= self.refusals:
            raise GraphUnavailable("graph write: Forbidden Neo.ClientError.Security.Forbidden: read only")
        await super().write_events(events)


async def test_a_graph_refusing_writes_while_it_answers_reads_holds_the_batch_and_dead_letters_nothing() -> (
    None
):
    graph = ReadOnlyGraph(refusals=4)
    c = consumer(graph)
    refused = await asyncio.wait_for(c._write(batch(3), asyncio.Event()), 30)
    assert refused == []  # every event written once the graph takes writes, none dead-lettered
    assert (graph.writes, c.written) == (5, 3)
    assert len(await graph.events("user_profile:age", None, None, 10)) == 3


async def test_a_graph_refusing_writes_reports_graph_up_0_while_the_batch_waits() -> None:
    graph = ReadOnlyGraph(refusals=10**9)
    c = consumer(graph)
    stop = asyncio.Event()
    task = asyncio.create_task(c._write(batch(1), stop))
    await asyncio.sleep(0.5)
    assert graph_up() == 0
    stop.set()
    assert await asyncio.wait_for(task, 5) is None  # stopped, nothing committed
    assert c.written == 0


class FlakyOnce(InMemoryGraph):
    """Fails the first write with an error that is not GraphUnavailable (a transient
    failure the adapter did not recognise), then takes writes; its probe passes."""

    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    async def write_events(self, events: Any) -> None:
        self.writes += 1
        if self.writes == 1:
            raise RuntimeError("commit failed")
        await super().write_events(events)


async def test_an_event_that_fails_alone_once_while_the_graph_takes_the_probe_is_written_not_dead_lettered() -> (
    None
):
    graph = FlakyOnce()
    c = consumer(graph)
    assert await c._write(batch(1), asyncio.Event()) == []
    assert (graph.writes, c.written) == (2, 1)


class SlowRefusing(InMemoryGraph):
    """Refuses every write after 0.25 s (a retried conflict), while its probe passes:
    the batch is split down to single events."""

    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    async def write_events(self, events: Any) -> None:
        self.writes += 1
        await asyncio.sleep(0.25)
        raise RuntimeError("refused")


async def test_stop_ends_a_long_bisection_within_a_second_and_commits_nothing() -> None:
    graph = SlowRefusing()
    c = consumer(graph)
    stop = asyncio.Event()
    task = asyncio.create_task(c._write(batch(64), stop))  # 2 x 127 writes to the end: 30 s
    await asyncio.sleep(0.5)
    stop.set()
    t0 = time.monotonic()
    assert await asyncio.wait_for(task, 10) is None
    assert time.monotonic() - t0 < 1.0
    assert graph.writes < 10


class DownAtStart(InMemoryGraph):
    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures

    async def start(self) -> None:
        if self.failures:
            self.failures -= 1
            raise GraphUnavailable("graph write failed 6 times, last: ServiceUnavailable")


async def test_a_consumer_started_while_the_graph_is_down_exports_graph_up_0_and_its_counters_while_it_waits() -> (
    None
):
    """It exited from graph.start() before exporting either: LineageGraphUnavailable
    could not fire, and LineageConsumerDown blamed a missing consumer (s54 r3 #5)."""
    from lineage import metrics

    for outcome in metrics.CONSUMED_OUTCOMES:  # as in a fresh process (earlier tests made them)
        with contextlib.suppress(KeyError):
            metrics.CONSUMED.remove(outcome)
    graph = DownAtStart(failures=10**9)
    stop = asyncio.Event()
    task = asyncio.create_task(start_graph(graph, stop))
    await asyncio.sleep(0.3)
    assert graph_up() == 0
    assert (
        REGISTRY.get_sample_value("featurestore_lineage_consumed_total", {"outcome": "written"}) is not None
    )
    stop.set()
    assert await asyncio.wait_for(task, 5) is False


async def test_a_consumer_started_while_the_graph_is_down_starts_once_it_is_back() -> None:
    graph = DownAtStart(failures=1)
    assert await asyncio.wait_for(start_graph(graph, asyncio.Event()), 10) is True
    assert graph_up() == 1
