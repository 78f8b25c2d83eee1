"""Stream views end to end, as docs/streaming.md walks through them: sample events
produced by the CLI through the real broker, ``featurestore stream run`` into real Redis,
``featurestore serve`` joining them (with a derived feature over them) over HTTP, the
processor's metrics, lineage naming the topic; and, in-process, a late event dropped
and counted, malformed ones dead-lettered while the processor carries on."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from prometheus_client import REGISTRY

from featurestore.definitions.parser import parse_definitions
from featurestore.streaming.processor import ProcessorOptions, StreamProcessor
from featurestore.streaming.store import NO_MARK, MemoryTileStore, PartitionMark, TileBatch
from featurestore.streaming.tiles import TileAccumulator, view_layout
from featurestore.streaming.windows import compute
from lineage.kafka import KafkaSettings, ensure_topic
from tests.servers import RedisServer, TansuBroker
from tests.support import (
    REDIS_CONNECT_MS,
    ROOT,
    ServerProcess,
    StreamProcessorProcess,
    http_post,
    wait_until,
)

DEMO = ROOT / "featurestore" / "demo" / "stream_features.yaml"


def metric(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def gql(server: ServerProcess, query: str) -> dict[str, Any]:
    status, raw, _ = http_post(server.url + "/graphql", json.dumps({"query": query}).encode())
    doc = json.loads(raw)
    assert status == 200 and "errors" not in doc, doc
    return doc["data"]  # type: ignore[no-any-return]


def test_the_walk_through_produces_processes_and_serves_stream_features(
    kafka: TansuBroker, redis_server: RedisServer, tmp_path: Path
) -> None:
    topic = f"clicks-{uuid.uuid4().hex[:8]}"
    defs = tmp_path / "features.yaml"
    # a second stream view of the same topic: one process runs both processors
    second = (
        "  - name: user_spend\n    entities: [user_id]\n"
        f"    source: {{topic: {topic}, key_fields: [user_id], timestamp_field: ts}}\n"
        "    aggregations: [{name: spend_1h, function: sum, column: amount, window: 1h}]\n"
    )
    defs.write_text(
        DEMO.read_text()
        .replace("topic: clicks", f"topic: {topic}")
        .replace("\nderived_views:", second + "\nderived_views:")
    )
    config = tmp_path / "config.yaml"
    config.write_text(
        f"project: streamdemo\nregistry: {{path: {tmp_path / 'registry'}}}\n"
        f"stores: {{default: {{kind: redis, url: '{redis_server.url}', cache: false, "
        f"connect_timeout_ms: {REDIS_CONNECT_MS}}}}}\n"
        "limits: {deadline_ms: 5000}\n"  # not the 500 ms default: the loaded CI machine
        f"derived: {{cache_dir: {tmp_path / 'kernels'}}}\n"  # not ~/.cache: another pytest process's
        "lineage: {window_seconds: 0.5}\n"
        "stream:\n  poll_seconds: 0.02\n  lag_interval_seconds: 0.2\n"
        f"  kafka: {{bootstrap_servers: '{kafka.bootstrap}', session_timeout_ms: 2000}}\n"
    )
    produced = subprocess.run(
        [sys.executable, "-m", "featurestore.cli", "stream", "produce-sample", "--config", str(config),
         "--topic", topic, "--users", "5", "--rate", "2000", "--seconds", "0.5", "--malformed-every", "10"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert produced.returncode == 0, produced.stderr
    sent = int(produced.stdout.split()[1])
    processor = StreamProcessorProcess(
        [
            "--config",
            str(config),
            "--definitions",
            str(defs),
            "--view",
            "user_clicks",
            "--view",
            "user_spend",
        ],
        tmp_path / "stream.log",
    ).start()
    try:

        def consumed_all() -> bool:
            text = processor.metrics()
            return all(
                metric(text, "featurestore_stream_events_total", outcome="consumed", view=v) >= sent
                for v in ("user_clicks", "user_spend")
            )

        wait_until(consumed_all, 60, "the processor to consume the sample")
        text = processor.metrics()
    finally:
        processor.stop()
    clicks = {"view": "user_clicks"}
    assert metric(text, "featurestore_stream_events_total", outcome="dead_lettered", **clicks) == sent // 10
    applied = metric(text, "featurestore_stream_events_total", outcome="applied", **clicks)
    filtered = metric(text, "featurestore_stream_events_total", outcome="filtered", **clicks)
    assert applied > 0 and filtered > 0 and applied + filtered + sent // 10 == sent
    spend = {"view": "user_spend"}  # no filter: every well-formed event
    assert metric(text, "featurestore_stream_events_total", outcome="applied", **spend) == sent - sent // 10
    assert metric(text, "featurestore_stream_event_to_servable_seconds_count") > 0
    assert 'featurestore_stream_processor_up{view="user_clicks"} 1.0' in text

    server = ServerProcess(
        ["--config", str(config), "--definitions", str(defs)], log_path=tmp_path / "s.log"
    ).start()
    try:
        # the windows' compiled pass is in before the server reports ready (start-up
        # waits for it before it opens its listeners and freezes its heap; /readyz may
        # answer a few ms before the line is logged)
        wait_until(lambda: "serving registry version" in server.read_log(), 15, "the server's ready line")
        log = server.read_log()
        assert log.index("stream windows: compiled pass loaded") < log.index("serving registry version"), log
        status, body = server.join(
            {"entities": {"user_id": [1, 2, 3, 4, 5, 77]}, "feature_service": "live_ranker"}
        )
        assert status == 200, body
        names = body["metadata"]["feature_names"]
        cols = dict(zip(names, body["results"], strict=True))
        assert cols["clicks_5m"]["statuses"] == ["PRESENT"] * 5 + ["NOT_FOUND"]
        assert sum(cols["clicks_5m"]["values"][:5]) == applied
        assert all(v is not None for v in cols["click_acceleration"]["values"][:5])
        assert all(ts is not None for ts in cols["clicks_1m"]["event_timestamps"][:5])
        query = '{ lineageEvents(featureId: "user_clicks:clicks_5m", limit: 5) { sourceTable } }'
        wait_until(lambda: gql(server, query)["lineageEvents"], 15, "the stream feature's lineage event")
        assert gql(server, query)["lineageEvents"][0]["sourceTable"] == f"kafka://{topic}"
        status, body = server.join(
            {"entities": {"user_id": [1, 2, 3, 4, 5]}, "features": ["user_spend:spend_1h"]}
        )
        assert status == 200 and all(v > 0 for v in body["results"][1]["values"]), body
        status, body = server.join({"entities": {"user_id": [1]}, "features": ["user_clicks:clicks_5m"]})
        assert status == 200
        status, raw, _ = http_post(
            server.url + "/v1/feature/push",
            json.dumps({"feature_view": "user_clicks", "rows": {"user_id": [1], "clicks_1m": [3]}}).encode(),
        )
        assert status == 400 and b"stream view" in raw
    finally:
        server.stop()


def test_a_late_event_is_dropped_and_counted_and_a_malformed_one_does_not_stop_the_processor(
    kafka: TansuBroker,
) -> None:
    from confluent_kafka import Producer
    from confluent_kafka.admin import AdminClient

    topic = f"late-{uuid.uuid4().hex[:8]}"
    defs = parse_definitions(
        {
            "project": "p",
            "entities": [{"name": "user_id", "dtype": "int64"}],
            "stream_views": [
                {
                    "name": "late_view",
                    "entities": ["user_id"],
                    "allowed_lateness": "30s",
                    "source": {"topic": topic, "key_fields": ["u"], "timestamp_field": "ts"},
                    "aggregations": [{"name": "n", "function": "count", "window": "1h"}],
                }
            ],
        },
        source="late.yaml",
    )
    view = defs.views["late_view"]
    now = time.time_ns() // 1_000_000
    values = [
        {"u": 1, "ts": now - 600_000},
        {"u": 1, "ts": now},  # the watermark moves to now
        {"u": 1, "ts": now - 20_000},  # within the lateness: applied
        {"u": 1, "ts": now - 60_000},  # beyond it: late
        "not json",
        {"u": 1, "ts": now + 1},
    ]
    ensure_topic(AdminClient({"bootstrap.servers": kafka.bootstrap}), topic, 1, 1)
    producer = Producer({"bootstrap.servers": kafka.bootstrap})
    for v in values:
        producer.produce(topic, key=b"1", value=v.encode() if isinstance(v, str) else json.dumps(v).encode())
    assert producer.flush(10) == 0
    store = MemoryTileStore()
    settings = KafkaSettings(bootstrap_servers=kafka.bootstrap, session_timeout_ms=2000)
    proc = StreamProcessor(view, store, settings, "p", ProcessorOptions(batch_messages=2, poll_seconds=0.05))

    def count(outcome: str) -> float:
        return (
            REGISTRY.get_sample_value(
                "featurestore_stream_events_total", {"view": "late_view", "outcome": outcome}
            )
            or 0.0
        )

    stop = threading.Event()
    thread = threading.Thread(target=proc.run, args=(stop,))
    thread.start()
    try:
        wait_until(
            lambda: (
                store.marks(view, topic).get(0, None) is not None and store.marks(view, topic)[0].offset == 5
            ),
            60,
            "the topic applied",
        )
    finally:
        stop.set()
        thread.join(30)
    assert count("late") == 1 and count("dead_lettered") == 1 and count("applied") == 4
    assert store.marks(view, topic)[0].watermark_us == (now + 1) * 1000


def test_a_batch_built_on_offsets_another_processor_moved_is_refused_and_the_partition_reread(
    kafka: TansuBroker,
) -> None:
    """A zombie: processor A still holds a partition another processor has taken over
    and written past. A's next write is refused whole; A re-reads from the stored offset
    and nothing is counted twice."""
    from confluent_kafka import Producer
    from confluent_kafka.admin import AdminClient

    topic = f"zombie-{uuid.uuid4().hex[:8]}"
    view = parse_definitions(
        {
            "project": "p",
            "entities": [{"name": "user_id", "dtype": "int64"}],
            "stream_views": [
                {
                    "name": "zombie_view",
                    "entities": ["user_id"],
                    "source": {"topic": topic, "key_fields": ["u"], "timestamp_field": "ts"},
                    "aggregations": [{"name": "n", "function": "count", "window": "1h"}],
                }
            ],
        },
        source="z.yaml",
    ).views["zombie_view"]
    ensure_topic(AdminClient({"bootstrap.servers": kafka.bootstrap}), topic, 1, 1)
    now_ms = time.time_ns() // 1_000_000
    producer = Producer({"bootstrap.servers": kafka.bootstrap})
    for _ in range(100):
        producer.produce(topic, key=b"1", value=json.dumps({"u": 1, "ts": now_ms}).encode())
    assert producer.flush(10) == 0
    store = MemoryTileStore()
    settings = KafkaSettings(bootstrap_servers=kafka.bootstrap, session_timeout_ms=2000)
    proc = StreamProcessor(view, store, settings, "p", ProcessorOptions(batch_messages=10, poll_seconds=0.05))
    proc._connect()
    stop = threading.Event()

    def offset() -> int:
        proc.turn(stop)
        return store.marks(view, topic).get(0, NO_MARK).offset

    def conflicts() -> float:
        labels = {"view": "zombie_view", "result": "conflict"}
        return REGISTRY.get_sample_value("featurestore_stream_batches_total", labels) or 0.0

    try:
        wait_until(lambda: offset() >= 9, 30, "processor A's first batches")
        proc._finish(stop)
        applied = store.marks(view, topic)[0].offset
        # the other processor applied the next 30 events (it read them from the topic)
        other = TileAccumulator(view_layout(view))
        for _ in range(30):
            other.add("1", now_ms * 1000, {})
        taken = TileBatch(topic, {0: (applied, PartitionMark(applied + 30, now_ms * 1000))}, other.records, 0)
        assert store.apply(view, taken) is None
        before = conflicts()
        wait_until(lambda: offset() == 99, 30, "processor A to finish the partition")
        proc._finish(stop)
    finally:
        proc._writer.shutdown()
        proc.close()
    assert conflicts() > before
    got = compute(view_layout(view), asyncio.run(store.read(view, ["1"])), now_ms * 1000 + 1, [0])
    assert got.columns == [[100]]  # every event once
