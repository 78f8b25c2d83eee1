"""A request too large for a stream view (its distinct keys x the tiles of the view's
longest window over 2,000,000 tile records) is the client's mistake: `featurestore
serve` over real Redis refuses it with 400 / INVALID_ARGUMENT naming the view, the key
count, the tiles and the limit, before any store is read, and counts no store failure
and no UNAVAILABLE value (which would page: FeatureStoreValuesUnavailable)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from featurestore.v1 import featurestore_pb2 as pb
from tests.integration.test_grpc_api import grpc_request
from tests.integration.test_stream_serving import metric
from tests.servers import RedisServer
from tests.support import REDIS_CONNECT_MS, ServerProcess, http_get

# 7 days of 1-minute tiles: 10,080 tiles + 1 of slack per key, so at most
# 2,000,000 // 10,081 = 198 distinct keys per request.
DEFINITIONS = """
project: streamsize
entities:
  - {name: user_id, dtype: int64}
stream_views:
  - name: weekly
    entities: [user_id]
    tile: 1m
    source: {topic: clicks, key_fields: [user_id], timestamp_field: ts}
    aggregations:
      - {name: clicks_7d, function: count, window: 7d}
"""
REFUSED = (
    "stream view 'weekly': 199 distinct keys x 10081 tiles each (its longest window) is over the "
    "2,000,000 tile records one request may make it assemble (at most 198 keys); ask for fewer keys "
    "per request"
)


@pytest.fixture(scope="module")
def server(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("streamsize")
    (root / "features.yaml").write_text(DEFINITIONS)
    (root / "config.yaml").write_text(
        f"project: streamsize\nregistry: {{path: {root / 'registry'}}}\n"
        f"stores: {{default: {{kind: redis, url: '{redis_server.url}', cache: false, "
        f"connect_timeout_ms: {REDIS_CONNECT_MS}}}}}\n"
        "limits: {deadline_ms: 5000}\n"  # not the 500 ms default: the loaded CI machine
    )
    args = ["--config", str(root / "config.yaml"), "--definitions", str(root / "features.yaml")]
    server = ServerProcess(args, log_path=root / "serve.log").start()
    yield server
    server.stop()


def reads_and_failures(server: ServerProcess) -> tuple[float, float, float]:
    """The server's own count of reads of the view, failed reads, UNAVAILABLE values."""
    text = http_get(server.url + "/metrics")[1].decode()
    return (
        metric(text, "featurestore_view_read_duration_seconds_count", view="weekly"),
        metric(text, "featurestore_view_read_failures_total", view="weekly"),
        metric(text, "featurestore_feature_values_total", view="weekly", status="UNAVAILABLE"),
    )


def body(keys: list[int]) -> dict[str, Any]:
    return {"entities": {"user_id": keys}, "features": ["weekly:clicks_7d"]}


def test_an_http_join_of_more_keys_than_a_stream_view_may_assemble_is_a_400_and_reads_no_store(
    server: ServerProcess,
) -> None:
    before = reads_and_failures(server)
    status, doc = server.join(body(list(range(199))))
    assert status == 400, doc
    assert doc["error"]["code"] == "INVALID_ARGUMENT"
    assert doc["error"]["message"] == REFUSED
    assert doc["error"]["details"] == [
        {"feature_view": "weekly", "keys": 199, "tiles_per_key": 10081,
         "max_tile_records": 2_000_000, "max_keys": 198}
    ]  # fmt: skip
    assert reads_and_failures(server) == before  # no read, no failure, no UNAVAILABLE value


def test_a_join_at_a_stream_views_limit_is_served_counting_repeated_keys_once(server: ServerProcess) -> None:
    reads, failures, unavailable = reads_and_failures(server)
    status, doc = server.join(body(list(range(198)) * 5))  # 990 rows, 198 distinct keys
    assert status == 200, doc
    assert doc["results"][1]["statuses"] == ["NOT_FOUND"] * 990  # no events were ever processed
    assert reads_and_failures(server) == (reads + 1, failures, unavailable)


def test_a_grpc_join_of_more_keys_than_a_stream_view_may_assemble_is_invalid_argument_and_reads_no_store(
    server: ServerProcess,
) -> None:
    before = reads_and_failures(server)
    with grpc.insecure_channel(server.grpc_target) as ch:
        join = ch.unary_unary(
            "/featurestore.v1.FeatureService/Join",
            request_serializer=pb.JoinRequest.SerializeToString,
            response_deserializer=pb.JoinResponse.FromString,
        )
        with pytest.raises(grpc.RpcError) as info:
            join(grpc_request(body(list(range(199)))), timeout=5)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert info.value.details() == REFUSED
    assert reads_and_failures(server) == before


def test_the_refusal_is_counted_as_the_clients_mistake_not_a_server_failure(server: ServerProcess) -> None:
    server.join(body(list(range(500))))
    text = http_get(server.url + "/metrics")[1].decode()
    assert (
        metric(text, "featurestore_requests_total", route="/v1/feature/join", outcome="INVALID_ARGUMENT") >= 1
    )
    failed = sum(
        metric(text, "featurestore_requests_total", outcome=code)
        for code in ("INTERNAL", "UNAVAILABLE", "DEADLINE_EXCEEDED")
    )
    assert failed == 0
