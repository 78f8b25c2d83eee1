"""A Bolt server that takes the connection and stops answering (a hung JVM, a path that
drops packets; here ArcadeDB under SIGSTOP) while the consumer writes (review s56 #2).
Writes and the probe had no deadline: `graph_up` stayed 1, the monitor stopped with its
probe, and SIGTERM waited for a write that never ended."""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from lineage.graph.base import GraphUnavailable
from lineage.graph.bolt import BoltGraph
from tests.integration.test_lineage_pipeline import consume_until, ev, new_consumer, produce
from tests.servers import ArcadeServer, TansuBroker
from tests.support import eventually


@pytest.fixture(scope="module")
def frozen_arcade(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ArcadeServer]:
    """An ArcadeDB of this module's own: its tests stop the JVM (the session's is shared)."""
    server = ArcadeServer(tmp_path_factory.mktemp("arcade-frozen")).start()
    try:
        yield server
    finally:
        server.stop()


class Frozen:
    """SIGSTOP the server's JVM for the ``with`` block (SIGCONT after it, whatever happens)."""

    def __init__(self, server: ArcadeServer) -> None:
        assert server.proc is not None
        self.pid = server.proc.pid

    def __enter__(self) -> Frozen:
        os.kill(self.pid, signal.SIGSTOP)
        return self

    def __exit__(self, *_: object) -> None:
        os.kill(self.pid, signal.SIGCONT)


def graph_up() -> float | None:
    return REGISTRY.get_sample_value("featurestore_lineage_graph_up", {"client": "consumer"})


def bolt(server: ArcadeServer, **timeouts: float) -> BoltGraph:
    return BoltGraph(server.uri, server.USER, server.PASSWORD, server.DATABASE, **timeouts)  # type: ignore[arg-type]


async def test_a_write_and_a_probe_to_a_server_that_stopped_answering_end_at_their_deadlines(
    frozen_arcade: ArcadeServer,
) -> None:
    frozen_arcade.wipe()
    graph = bolt(frozen_arcade, write_timeout=2.0, probe_timeout=1.0)
    await graph.start()
    await graph.write_events([ev(1)])
    try:
        with Frozen(frozen_arcade):
            t0 = time.monotonic()
            with pytest.raises(GraphUnavailable, match="graph write took longer than 2 s"):
                await graph.write_events([ev(2)])
            assert time.monotonic() - t0 < 4
            t0 = time.monotonic()
            with pytest.raises(GraphUnavailable, match="graph probe took longer than 1 s"):
                await graph.ping()
            assert time.monotonic() - t0 < 3
        await graph.write_events([ev(2)])  # answering again: the same write passes
        await graph.ping()
        assert [s.count for s in await graph.served_by("user_profile:age")] == [20]
    finally:
        await graph.close()


async def test_a_consumer_whose_graph_stops_answering_reports_it_down_and_stops_at_once(
    kafka: TansuBroker, frozen_arcade: ArcadeServer, tmp_path: Path
) -> None:
    """graph_up drops by the monitor's probe (a batch's write waits up to 60 s), and a
    stop ends the write in hand at once, committing nothing; the next consumer writes it."""
    frozen_arcade.wipe()
    topic, group = f"lineage-{uuid.uuid4().hex[:6]}", f"g-{uuid.uuid4().hex[:6]}"
    await produce(kafka, topic, [ev(i) for i in range(5)], partitions=1)
    graph = bolt(frozen_arcade)  # the deadlines a consumer has: a write 60 s, a probe 5 s
    await graph.start()
    consumer = new_consumer(kafka, topic, graph, group)
    stop = asyncio.Event()
    task = asyncio.create_task(consumer.run(stop))
    try:
        await eventually(lambda: consumer.written >= 5, 30, "the first events written")
        with Frozen(frozen_arcade):
            await produce(kafka, topic, [ev(i) for i in range(5, 10)], partitions=1)
            await eventually(lambda: graph_up() == 0, 20, "graph_up 0 while the graph does not answer")
            t0 = time.monotonic()
            stop.set()
            await asyncio.wait_for(task, 10)
            assert time.monotonic() - t0 < 5
            assert consumer.written == 5
    finally:
        stop.set()
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    try:
        back = new_consumer(kafka, topic, graph, group)  # nothing of the held batch was committed
        await consume_until(back, lambda: back.written >= 5, within=60)
        assert [s.count for s in await graph.served_by("user_profile:age")] == [100]
    finally:
        await graph.close()
