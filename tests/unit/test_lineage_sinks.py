"""What the lineage sinks count and where they do their blocking work."""

from __future__ import annotations

import asyncio
import threading
from datetime import UTC, datetime
from typing import Any

import pytest

from lineage import metrics
from lineage.events import LineageEvent
from lineage.graph.memory import InMemoryGraph
from lineage.kafka import KafkaSettings
from lineage.runs import JobRunEvent
from lineage.sinks import InProcessSink, KafkaSink


def just_ended(window_seconds: float) -> LineageEvent:
    """An event whose window (of ``window_seconds``) ended about now."""
    start = datetime.now(UTC).timestamp() - window_seconds
    stamp = datetime.fromtimestamp(start, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return LineageEvent(
        feature_id="v:f", feature_version=1, source_table="memory://default/v", timestamp=stamp,
        upstream_deps=[], registry_version=1, served_count=1, trace_ids=[], service="fs@t",
    )  # fmt: skip


async def test_the_in_process_sink_measures_event_to_graph_from_the_end_of_the_emitters_window() -> None:
    """It assumed 1 s windows: with 10 s windows every event read 9 s late."""
    before = metrics.EVENT_TO_GRAPH._sum.get()
    await InProcessSink(InMemoryGraph(), window_seconds=10.0).send([just_ended(10.0)])
    assert metrics.EVENT_TO_GRAPH._sum.get() - before < 1.0


def counts() -> tuple[float, float]:
    return metrics.EVENTS.labels("failed")._value.get(), metrics.RUN_MESSAGES.labels("failed")._value.get()


async def test_job_run_messages_are_counted_apart_from_lineage_events() -> None:
    """Runs were counted as events (delivered or failed) though never emitted as events."""
    sink = KafkaSink(KafkaSettings(bootstrap_servers="127.0.0.1:1"), close_seconds=0.1)
    await sink.close()  # what is sent to a closed sink is counted failed, without a broker
    events0, runs0 = counts()
    run = JobRunEvent(job="materialize:v", run_id="r", state="START", started_at="2026-12-01T00:00:00Z")
    await sink.send_runs([run, run])
    events1, runs1 = counts()
    assert (events1 - events0, runs1 - runs0) == (0, 2)


async def test_a_replaced_producer_is_closed_off_the_event_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    """Freeing it on the loop (rd_kafka_destroy) stalled the serving process ~35 ms."""
    closed_on: list[threading.Thread] = []
    monkeypatch.setattr(
        "lineage.sinks.close_producer", lambda p: closed_on.append(threading.current_thread())
    )
    sink = KafkaSink(KafkaSettings(bootstrap_servers="127.0.0.1:1"), close_seconds=0.1)
    old: Any = sink._producer
    sink._fatal = "fatal for the test"
    sink._replace_producer()
    assert sink._producer is not old
    await asyncio.gather(*sink._closing)
    assert closed_on and closed_on[0] is not threading.current_thread()
    await sink.close()
