"""Drift records that do not reach the lineage graph are counted, whatever lost them
(review 2, s54, finding 6)."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import REGISTRY

from featurestore.quality.monitor import DriftResult
from featurestore.quality.record_writer import RecordWriter
from featurestore.quality.records import GraphRecorder


def dropped(view: str, reason: str) -> float:
    return (
        REGISTRY.get_sample_value(
            "featurestore_feature_drift_records_dropped_total", {"view": view, "reason": reason}
        )
        or 0.0
    )


def detection(view: str, at_us: int) -> DriftResult:
    return DriftResult(view, "x", "ks", 0.5, 1e-9, True, 1000, 1, at_us)


class _Graph:
    """A lineage graph whose drift writes fail (``down``) or never end (``hung``)."""

    def __init__(self, down: bool = False, hung: bool = False, socket_timeout: bool = False) -> None:
        self.down, self.hung, self.socket_timeout = down, hung, socket_timeout

    async def add_drift(self, records: list[object]) -> None:
        if self.down:
            raise ConnectionError("graph unavailable after 6 tries")
        if self.socket_timeout:  # the driver's own (socket.timeout is TimeoutError), at once
            raise TimeoutError("neo4j: socket read timed out")
        if self.hung:
            await asyncio.Event().wait()


async def test_records_the_lineage_graph_fails_to_write_are_counted_as_errors() -> None:
    """GraphRecorder caught and logged the graph's error itself: reason="error" stayed 0."""
    writer = RecordWriter(GraphRecorder(_Graph(down=True), server="s"))  # type: ignore[arg-type]
    task = asyncio.create_task(writer.run())
    try:
        writer.put([detection("rec_error", 0), detection("rec_error", 1)])
        await asyncio.sleep(0.05)
        assert dropped("rec_error", "error") == 2
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert dropped("rec_error", "shutdown") == 0


async def test_records_being_written_or_waiting_when_the_server_stops_are_counted_as_shutdown() -> None:
    """The writer was cancelled with them: lost, neither counted nor logged."""
    writer = RecordWriter(GraphRecorder(_Graph(hung=True), server="s"))  # type: ignore[arg-type]
    task = asyncio.create_task(writer.run())
    writer.put([detection("rec_stop", 0)])
    await asyncio.sleep(0.05)  # that one is being written
    writer.put([detection("rec_stop", 1), detection("rec_stop", 2)])
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert dropped("rec_stop", "shutdown") == 3
    assert dropped("rec_stop", "timeout") == dropped("rec_stop", "error") == 0


async def test_a_timeout_the_graph_client_raises_itself_is_an_error_and_only_the_writers_deadline_a_timeout(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Any TimeoutError was counted as `timeout`, logged "no answer in 10 s" (review 3, s54)."""
    for view, graph, timeout in (
        ("rec_sock", _Graph(socket_timeout=True), 10.0),
        ("rec_hung", _Graph(hung=True), 0.05),
    ):
        writer = RecordWriter(GraphRecorder(graph, server="s"))  # type: ignore[arg-type]
        writer.timeout = timeout
        task = asyncio.create_task(writer.run())
        try:
            writer.put([detection(view, 0)])
            await asyncio.sleep(0.2)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    assert dropped("rec_sock", "error") == 1 and dropped("rec_sock", "timeout") == 0
    assert dropped("rec_hung", "timeout") == 1 and dropped("rec_hung", "error") == 0
    assert "socket read timed out" in caplog.text
    assert caplog.text.count("no answer in") == 1  # the hung graph's
