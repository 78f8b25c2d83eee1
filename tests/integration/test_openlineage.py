"""Materialization runs as OpenLineage RunEvents: a real HTTP receiver (a local server in
the test, the way Marquez takes them) and the file transport, events checked against the
RunEvent JSON schema."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jsonschema
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from confluent_kafka import Consumer
from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]
from openlineage.client import OpenLineageClient
from openlineage.client.event_v2 import RunEvent
from openlineage.client.facet_v2 import schema_dataset

from featurestore.config import OpenLineageConfig
from lineage.openlineage import transport_config
from tests.integration.test_materialize_incremental import cli_repo, materialize
from tests.servers import RedisServer, TansuBroker

# The OpenLineage RunEvent (spec 2-0-2) as JSON Schema: what every consumer relies on.
# openlineage-python 1.54.0 ships no schema file (only the classes generated from it), so
# the required structure is written here, and the schema URLs the events carry are
# checked against the ones the client's generated classes declare.
FACET = {"type": "object", "required": ["_producer", "_schemaURL"],
         "properties": {"_producer": {"type": "string", "format": "uri"},
                        "_schemaURL": {"type": "string", "format": "uri"}}}  # fmt: skip
DATASET = {
    "type": "object",
    "required": ["namespace", "name"],
    "properties": {"namespace": {"type": "string", "minLength": 1}, "name": {"type": "string", "minLength": 1},
                   "facets": {"type": "object", "additionalProperties": FACET},
                   "outputFacets": {"type": "object", "additionalProperties": FACET}},
}  # fmt: skip
RUN_EVENT = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "required": ["eventTime", "producer", "schemaURL", "run", "job"],
    "properties": {
        "eventType": {"enum": ["START", "RUNNING", "COMPLETE", "ABORT", "FAIL", "OTHER"]},
        "eventTime": {"type": "string", "format": "date-time"},
        "producer": {"type": "string", "format": "uri"},
        "schemaURL": {"type": "string", "format": "uri"},
        "run": {"type": "object", "required": ["runId"],
                "properties": {"runId": {"type": "string", "format": "uuid"},
                               "facets": {"type": "object", "additionalProperties": FACET}}},
        "job": {"type": "object", "required": ["namespace", "name"],
                "properties": {"namespace": {"type": "string"}, "name": {"type": "string"}}},
        "inputs": {"type": "array", "items": DATASET},
        "outputs": {"type": "array", "items": DATASET},
    },
}  # fmt: skip


def valid(event: dict[str, Any]) -> None:
    jsonschema.validate(event, RUN_EVENT, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)
    assert event["schemaURL"] == RunEvent._get_schema()
    for out in event.get("outputs", []):
        assert out["facets"]["schema"]["_schemaURL"] == schema_dataset.SchemaDatasetFacet._get_schema()


class Receiver(ThreadingHTTPServer):
    def __init__(self) -> None:
        self.bodies: list[tuple[str, dict[str, Any]]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                outer.bodies.append((self.path, json.loads(body)))
                self.send_response(201)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                return None

        super().__init__(("127.0.0.1", 0), Handler)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def test_a_materialization_sends_start_and_complete_to_an_http_receiver(
    redis_server: RedisServer, tmp_path: Path, receiver: Receiver
) -> None:
    defs, config = cli_repo(tmp_path, redis_server.url)
    port = receiver.server_address[1]
    config.write_text(
        config.read_text()
        + f"lineage: {{openlineage: {{enabled: true, transport: http, url: 'http://127.0.0.1:{port}'}}}}\n"
    )
    out = materialize(config, defs, "--view", "scores")
    assert out.returncode == 0, out.stderr
    assert [path for path, _ in receiver.bodies] == ["/api/v1/lineage", "/api/v1/lineage"]
    start, complete = (body for _, body in receiver.bodies)
    for event in (start, complete):
        valid(event)
    assert (start["eventType"], complete["eventType"]) == ("START", "COMPLETE")
    assert start["run"]["runId"] == complete["run"]["runId"]
    assert (complete["job"]["namespace"], complete["job"]["name"]) == ("featurestore", "materialize:scores")
    [source] = complete["inputs"]
    assert source["namespace"] == "file" and source["name"] == str(tmp_path / "scores")  # its batch_source
    [online] = complete["outputs"]
    assert online["namespace"].startswith("redis://") and online["name"].endswith("/scores")
    fields = {f["name"]: f["type"] for f in online["facets"]["schema"]["fields"]}
    assert fields == {"user_id": "int64", "score": "int64", "tag": "string"}
    assert online["facets"]["version"]["datasetVersion"] == "1"
    assert online["outputFacets"]["outputStatistics"]["rowCount"] == 200


def test_a_failed_materialization_is_a_fail_event_with_its_error_in_the_file(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    defs, config = cli_repo(tmp_path, redis_server.url)
    events = tmp_path / "openlineage.jsonl"
    config.write_text(
        config.read_text()
        + f"lineage: {{openlineage: {{enabled: true, transport: file, file: '{events}'}}}}\n"
    )
    bad = tmp_path / "bad.parquet"  # score is a string here: conform() refuses the batch
    pq.write_table(
        pa.table({"user_id": [1], "score": ["x"], "tag": ["t"],
                  "event_timestamp": pa.array([0], pa.timestamp("us", tz="UTC"))}),
        bad,
    )  # fmt: skip
    out = materialize(config, defs, "--view", "scores", "--source", str(bad))
    assert out.returncode != 0
    lines = [json.loads(line) for line in events.read_text().splitlines()]
    assert [e["eventType"] for e in lines] == ["START", "FAIL"]
    for event in lines:
        valid(event)
    error = lines[1]["run"]["facets"]["errorMessage"]
    assert error["programmingLanguage"] == "python" and "score" in error["message"]
    assert (lines[1]["inputs"][0]["namespace"], lines[1]["inputs"][0]["name"]) == ("file", str(bad))


def test_the_kafka_transport_puts_the_run_events_on_a_topic(
    redis_server: RedisServer, kafka: TansuBroker, tmp_path: Path
) -> None:
    topic = f"openlineage-{uuid.uuid4().hex[:6]}"
    admin = AdminClient({"bootstrap.servers": kafka.bootstrap})
    admin.create_topics([NewTopic(topic, 1, 1)])[topic].result(10)
    defs, config = cli_repo(tmp_path, redis_server.url)
    config.write_text(
        config.read_text() + "lineage: {openlineage: {enabled: true, transport: kafka, "
        f"bootstrap_servers: '{kafka.bootstrap}', topic: {topic}}}}}\n"
    )
    out = materialize(config, defs, "--view", "scores")
    assert out.returncode == 0, out.stderr
    consumer = Consumer({"bootstrap.servers": kafka.bootstrap, "group.id": f"g-{uuid.uuid4().hex[:6]}",
                         "auto.offset.reset": "earliest", "session.timeout.ms": 2000})  # fmt: skip
    consumer.subscribe([topic])
    got: list[dict[str, Any]] = []
    for _ in range(60):
        m = consumer.poll(0.5)
        if m is not None and not m.error():
            got.append(json.loads(m.value() or b"{}"))
        if len(got) == 2:
            break
    consumer.close()
    assert [e["eventType"] for e in got] == ["START", "COMPLETE"]
    for event in got:
        valid(event)


def test_closing_with_a_hung_receiver_and_a_full_queue_gives_up_after_its_timeout() -> None:
    from lineage.openlineage import OpenLineageListener
    from lineage.runs import JobRunEvent

    release = threading.Event()

    class Hung(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            release.wait()
            self.send_response(201)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            return None

    server = ThreadingHTTPServer(("127.0.0.1", 0), Hung)
    serving = threading.Thread(target=server.serve_forever, daemon=True)
    serving.start()
    settings = OpenLineageConfig(url=f"http://127.0.0.1:{server.server_address[1]}", timeout_seconds=60.0)
    client = OpenLineageClient(config={"transport": transport_config(settings)})
    listener = OpenLineageListener(client, "ns", queue_size=1)
    try:
        for n in range(3):  # one in the hung request, one queued, one dropped
            listener.emit(
                JobRunEvent(job="j", run_id=f"r{n}", state="START", started_at="2026-01-01T00:00:00Z")
            )
        closing = threading.Thread(target=listener.close, args=(0.5,), daemon=True)
        closing.start()
        closing.join(30)  # the receiver hangs for 60 s: without the bound close waits for ever
        assert not closing.is_alive()
    finally:
        release.set()
        server.shutdown()
        server.server_close()
