"""Huge values in a stream view, `featurestore serve` over real Redis fed through the real
broker: a float beyond +-1e292 is malformed (dead-lettered with msgspec's reason), so no
window's sum overflows float64; HTTP and gRPC serve the same values (a sum of two 1e308
was inf: null over HTTP, inf over gRPC; review s55). A window value that is not finite
anyway (tiles written before that bound) is a PRESENT null over both."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from featurestore.definitions.parser import load_definitions
from featurestore.model import FeatureView
from featurestore.streaming.processor import ProcessorOptions, StreamProcessor
from featurestore.streaming.redis_store import RedisTileStore
from featurestore.streaming.store import PartitionMark, TileBatch
from featurestore.streaming.tiles import TileAccumulator, view_layout
from featurestore.v1 import featurestore_pb2 as pb
from lineage.kafka import KafkaSettings
from tests.integration.test_grpc_api import as_http_shape, grpc_request
from tests.integration.test_stream_faults import topic_producer
from tests.integration.test_stream_resilience import dead_letters, run_until_marked
from tests.servers import RedisServer, TansuBroker
from tests.support import REDIS_CONNECT_MS, ServerProcess

TOPIC = f"spend-{uuid.uuid4().hex[:8]}"
DEFINITIONS = f"""
project: streamhuge
entities:
  - {{name: user_id, dtype: int64}}
stream_views:
  - name: spend
    entities: [user_id]
    tile: 1m
    source: {{topic: {TOPIC}, key_fields: [u], timestamp_field: ts}}
    aggregations:
      - {{name: total_1h, function: sum, column: amount, window: 1h}}
      - {{name: avg_1h, function: avg, column: amount, window: 1h}}
      - {{name: top_1h, function: max, column: amount, window: 1h}}
      - {{name: n_1h, function: count, window: 1h}}
"""
BODY = {"features": ["spend:total_1h", "spend:avg_1h", "spend:top_1h", "spend:n_1h"]}


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("streamhuge")
    (root / "features.yaml").write_text(DEFINITIONS)
    return root


@pytest.fixture(scope="module")
def view(root: Path) -> FeatureView:
    return load_definitions(root / "features.yaml").views["spend"]


@pytest.fixture(scope="module")
def server(redis_server: RedisServer, root: Path) -> Iterator[ServerProcess]:
    (root / "config.yaml").write_text(
        f"project: streamhuge\nregistry: {{path: {root / 'registry'}}}\n"
        f"stores: {{default: {{kind: redis, url: '{redis_server.url}', cache: false, "
        f"connect_timeout_ms: {REDIS_CONNECT_MS}}}}}\n"
        f"derived: {{cache_dir: {root / 'kernels'}}}\n"
        "limits: {deadline_ms: 5000}\n"  # not the 500 ms default: the loaded CI machine
    )
    args = ["--config", str(root / "config.yaml"), "--definitions", str(root / "features.yaml")]
    server = ServerProcess(args, log_path=root / "serve.log").start()
    yield server
    server.stop()


def both_transports(server: ServerProcess, user: int) -> tuple[list[Any], list[Any]]:
    """The features' results over HTTP and over gRPC, the latter in the HTTP shape."""
    body = {"entities": {"user_id": [user]}, **BODY}
    status, doc = server.join(body)
    assert status == 200, doc
    with grpc.insecure_channel(server.grpc_target) as ch:
        join = ch.unary_unary(
            "/featurestore.v1.FeatureService/Join",
            request_serializer=pb.JoinRequest.SerializeToString,
            response_deserializer=pb.JoinResponse.FromString,
        )
        answer = join(grpc_request(body), timeout=10)
    return doc["results"][1:], as_http_shape(answer)["results"][1:]  # (the first: the entity column)


def test_a_value_beyond_1e292_is_dead_lettered_and_http_and_grpc_serve_the_same_finite_sum(
    kafka: TansuBroker, redis_server: RedisServer, server: ServerProcess, view: FeatureView
) -> None:
    now = time.time_ns() // 1_000_000
    producer = topic_producer(kafka, TOPIC)
    for amount in ("1e292", "1e292", "1e308", "-1e300", "5"):
        producer.produce(TOPIC, key=b"1", value=b'{"u": 1, "ts": %d, "amount": %s}' % (now, amount.encode()))
    assert producer.flush(10) == 0
    store = RedisTileStore("default", "streamhuge", redis_server.url)
    settings = KafkaSettings(bootstrap_servers=kafka.bootstrap, session_timeout_ms=2000)
    proc = StreamProcessor(view, store, settings, "streamhuge", ProcessorOptions(poll_seconds=0.05))
    try:
        run_until_marked(proc, store, view, TOPIC, 4, "the five events")
    finally:
        store.close()
    reasons = [dict(m.headers())["featurestore-error"] for m in dead_letters(kafka, f"{TOPIC}.dlq", 2)]
    assert reasons == [
        b"Expected `float` <= 1e+292 - at `$.amount`",
        b"Expected `float` >= -1e+292 - at `$.amount`",
    ]
    http, over_grpc = both_transports(server, 1)
    assert over_grpc == http
    assert [r["values"] for r in http] == [[2e292], [2e292 / 3], [1e292], [3]]
    assert [r["statuses"] for r in http] == [["PRESENT"]] * 4


def test_a_window_value_not_finite_in_tiles_from_before_the_bound_is_a_null_over_http_and_grpc(
    redis_server: RedisServer, server: ServerProcess, view: FeatureView
) -> None:
    """Written as a processor without the bound did: two events of 1e308 in one window."""
    now_us = time.time_ns() // 1000
    tile_us = view_layout(view).tile_us
    acc = TileAccumulator(view_layout(view))
    for ts in (now_us - tile_us, now_us):
        acc.add("2", ts, {"amount": 1e308})
    store = RedisTileStore("default", "streamhuge", redis_server.url)
    try:
        batch = TileBatch("legacy", {0: (-1, PartitionMark(0, now_us))}, acc.records, now_us // tile_us)
        assert store.apply(view, batch) is None
    finally:
        store.close()
    http, over_grpc = both_transports(server, 2)
    assert over_grpc == http
    assert [r["values"] for r in http] == [[None], [None], [1e308], [2]]
    assert [r["statuses"] for r in http] == [["PRESENT"]] * 4
