"""Every class of bad input, on both protocols: the contract's status, a message that
names the problem, and never a 500 / INTERNAL."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from featurestore.v1 import featurestore_pb2 as pb
from tests.integration.test_grpc_api import grpc_request
from tests.support import ServerProcess, http_post

JOIN = "/featurestore.v1.FeatureService/Join"


@pytest.fixture(scope="module")
def raw_join(server: ServerProcess) -> Iterator[Any]:
    """A Join callable taking raw bytes, so malformed protobuf can be sent."""
    with grpc.insecure_channel(server.grpc_target) as ch:
        yield ch.unary_unary(JOIN, request_serializer=None, response_deserializer=None)


def http_error(server: ServerProcess, body: bytes | dict[str, Any]) -> tuple[int, dict[str, Any]]:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    status, out, headers = http_post(server.url + "/v1/feature/join", raw)
    assert headers["content-type"] == "application/json"
    doc = json.loads(out)
    assert set(doc) == {"error"} and set(doc["error"]) == {"code", "message", "details"}
    return status, doc["error"]


def grpc_error(raw_join: Any, body: bytes | dict[str, Any]) -> grpc.RpcError:
    data = body if isinstance(body, bytes) else grpc_request(body).SerializeToString()
    with pytest.raises(grpc.RpcError) as info:
        raw_join(data, timeout=5)
    return info.value


CASES: list[tuple[str, dict[str, Any], int, grpc.StatusCode, str]] = [
    # name, body, http status, grpc code, text the message must contain
    (
        "wrong key type",
        {"entities": {"user_id": ["abc"]}, "features": ["user_profile:age"]},
        400,
        grpc.StatusCode.INVALID_ARGUMENT,
        "user_id",
    ),
    (
        "ragged columns",
        {"entities": {"user_id": [1, 2], "item_id": [1]}, "features": ["user_item:affinity"]},
        400,
        grpc.StatusCode.INVALID_ARGUMENT,
        "different lengths",
    ),
    (
        "no entity rows",
        {"entities": {"user_id": []}, "features": ["user_profile:age"]},
        400,
        grpc.StatusCode.INVALID_ARGUMENT,
        "no rows",
    ),
    (
        "no entity columns",
        {"entities": {}, "features": ["user_profile:age"]},
        400,
        grpc.StatusCode.INVALID_ARGUMENT,
        "entities",
    ),
    ("no features", {"entities": {"user_id": [1]}}, 400, grpc.StatusCode.INVALID_ARGUMENT, "features"),
    (
        "features and service",
        {"entities": {"user_id": [1]}, "features": ["user_profile:age"], "feature_service": "ranker_v1"},
        400,
        grpc.StatusCode.INVALID_ARGUMENT,
        "not both",
    ),
    (
        "bad feature ref",
        {"entities": {"user_id": [1]}, "features": ["age"]},
        400,
        grpc.StatusCode.INVALID_ARGUMENT,
        "'age'",
    ),
    (
        "missing entity",
        {"entities": {"user_id": [1]}, "features": ["item:price"]},
        400,
        grpc.StatusCode.INVALID_ARGUMENT,
        "item_id",
    ),
    (
        "unknown entity",
        {"entities": {"user_id": [1], "shop_id": [1]}, "features": ["user_profile:age"]},
        400,
        grpc.StatusCode.INVALID_ARGUMENT,
        "shop_id",
    ),
    (
        "name clash",
        {"entities": {"user_id": [1]}, "features": ["user_profile:age", "user_profile:age"]},
        400,
        grpc.StatusCode.INVALID_ARGUMENT,
        "twice",
    ),
    (
        "unknown feature",
        {"entities": {"user_id": [1]}, "features": ["user_profile:shoe_size"]},
        404,
        grpc.StatusCode.NOT_FOUND,
        "shoe_size",
    ),
    (
        "unknown view",
        {"entities": {"user_id": [1]}, "features": ["user_shoes:size"]},
        404,
        grpc.StatusCode.NOT_FOUND,
        "user_shoes",
    ),
    (
        "unknown service",
        {"entities": {"user_id": [1]}, "feature_service": "ranker_v9"},
        404,
        grpc.StatusCode.NOT_FOUND,
        "ranker_v9",
    ),
    (
        "too many keys",
        {"entities": {"user_id": list(range(1001))}, "features": ["user_profile:age"]},
        413,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "1000",
    ),
]


@pytest.mark.parametrize(("name", "body", "status", "code", "needle"), CASES, ids=[c[0] for c in CASES])
def test_bad_request_http(
    server: ServerProcess, name: str, body: dict[str, Any], status: int, code: grpc.StatusCode, needle: str
) -> None:
    got, err = http_error(server, body)
    assert got == status
    assert err["code"] == code.name
    assert needle in err["message"]


@pytest.mark.parametrize(("name", "body", "status", "code", "needle"), CASES, ids=[c[0] for c in CASES])
def test_bad_request_grpc(
    raw_join: Any, name: str, body: dict[str, Any], status: int, code: grpc.StatusCode, needle: str
) -> None:
    # every case applies to gRPC too: typed columns can still be ragged or empty
    err = grpc_error(raw_join, body)
    assert err.code() == code
    assert needle in err.details()


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"{",
        b"[1, 2]",
        b'{"entities": 5}',
        b'{"entities": {"user_id": [1.5]}, "features": ["user_profile:age"]}',
        b'{"entities": {"user_id": [null]}, "features": ["user_profile:age"]}',
        b'{"entities": {"user_id": [1]}, "features": "user_profile:age"}',
        b'{"entities": {"user_id": [1]}, "features": ["user_profile:age"], "extra": 1}',
        b"\xff\xfe\x00garbage",
        b'{"entities": {"user_id": [99999999999999999999999]}, "features": ["user_profile:age"]}',
        b'{"entities": {"user_id": [true]}, "features": ["user_profile:age"]}',
    ],
)
def test_malformed_json_is_400(server: ServerProcess, raw: bytes) -> None:
    status, err = http_error(server, raw)
    assert status == 400 and err["code"] == "INVALID_ARGUMENT"
    assert (
        err["message"].startswith("invalid join request")
        or "int64" in err["message"]
        or "user_id" in err["message"]
    )


def test_validation_error_names_the_location(server: ServerProcess) -> None:
    _, err = http_error(server, b'{"entities": {"user_id": [1, 2.5]}, "features": ["user_profile:age"]}')
    assert "$.entities.user_id[1]" in err["message"] and "float" in err["message"]


@pytest.mark.parametrize("raw", [b"\xff\xff\xff\xff", b"\x0a\xff\x01", b"\x12\x05ab"])
def test_malformed_protobuf_is_invalid_argument(raw_join: Any, raw: bytes) -> None:
    err = grpc_error(raw_join, raw)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "protobuf" in err.details()


def test_body_too_large_is_413(server: ServerProcess) -> None:
    body = json.dumps({"entities": {"user_id": [1] * 10}, "features": ["user_profile:age"] * 40_000}).encode()
    assert len(body) > 262_144
    status, err = http_error(server, body)
    assert status == 413 and err["code"] == "RESOURCE_EXHAUSTED" and "262144" in err["message"]


def test_chunked_body_too_large_is_413(server: ServerProcess) -> None:
    """No content-length: the limit is enforced while reading the stream."""
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=10)
    chunks = (b'{"entities": {"user_id": [' + b"1," * 20_000 for _ in range(10))
    conn.request(
        "POST",
        "/v1/feature/join",
        body=chunks,
        headers={"content-type": "application/json"},
        encode_chunked=True,
    )
    resp = conn.getresponse()
    assert resp.status == 413
    assert json.loads(resp.read())["error"]["code"] == "RESOURCE_EXHAUSTED"
    conn.close()


def raw_request(body_length: int | str, *headers: str) -> bytes:
    head = ["POST /v1/feature/join HTTP/1.1", "host: test", "content-type: application/json",
            f"content-length: {body_length}", *headers]  # fmt: skip
    return ("\r\n".join(head) + "\r\n\r\n").encode()


def read_response(sock: socket.socket) -> tuple[bytes, dict[str, str], bytes]:
    """One response off a keep-alive socket: its status line, headers and body."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536) or b"<eof>"
        assert not data.endswith(b"<eof>"), data
    head, _, rest = data.partition(b"\r\n\r\n")
    status, *lines = head.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines)}
    while len(rest) < int(headers["content-length"]):
        rest += sock.recv(65536)
    return status.encode(), headers, rest


def test_a_body_declared_beyond_the_drain_bound_is_refused_unread_and_the_connection_closed(
    server: ServerProcess,
) -> None:
    """No 100 Continue for a client that waits for it, no reading of what is not worth
    reading: the 413 at once, then the close (the connection is mid-body)."""
    # a body that would be drained but whose client waits for 100 Continue (its length
    # with trailing whitespace too, which llhttp frames by), or a 1 GiB body
    cases: list[tuple[list[str], int | str]] = [
        (["expect: 100-continue"], 300_000),
        (["expect: 100-continue"], "300000 \t"),
        ([], 1 << 30),
    ]
    for headers, declared in cases:
        with socket.create_connection(("127.0.0.1", server.http_port), timeout=10) as sock:
            sock.sendall(raw_request(declared, *headers))
            status, got, body = read_response(sock)
            assert status == b"HTTP/1.1 413 Request Entity Too Large", (headers, status)
            assert got["connection"] == "close" and b"262144" in body
            assert sock.recv(1024) == b""  # closed by the server


def test_a_body_over_the_limit_that_is_read_to_its_end_keeps_the_connection_for_the_next_request(
    server: ServerProcess,
) -> None:
    join = json.dumps({"entities": {"user_id": [1]}, "features": ["user_profile:age"]}).encode()
    with socket.create_connection(("127.0.0.1", server.http_port), timeout=10) as sock:
        sock.sendall(raw_request(300_000) + b" " * 300_000)  # over 262,144, drained
        status, got, _ = read_response(sock)
        assert status.startswith(b"HTTP/1.1 413") and "connection" not in got
        sock.sendall(raw_request(len(join)) + join)
        status, _, body = read_response(sock)
        assert status == b"HTTP/1.1 200 OK", body


def test_the_deadline_counts_from_the_first_byte_of_the_request(server: ServerProcess) -> None:
    """A body that arrives after the deadline has passed: 504 before any store is read
    (the deadline once started after the body was read: this join was answered 200)."""
    join = json.dumps({"entities": {"user_id": [1]}, "features": ["user_profile:age"]}).encode()
    with socket.create_connection(("127.0.0.1", server.http_port), timeout=10) as sock:
        sock.sendall(raw_request(len(join), "x-featurestore-deadline-ms: 100"))
        time.sleep(1.0)  # well past the 100 ms even if the loaded CI machine reads the head late
        sock.sendall(join)
        status, _, body = read_response(sock)
    assert status.startswith(b"HTTP/1.1 504"), body
    assert json.loads(body)["error"]["code"] == "DEADLINE_EXCEEDED"


def test_grpc_message_too_large(raw_join: Any) -> None:
    req = pb.JoinRequest(features=["user_profile:age"] * 20_000)
    req.entities.add(name="user_id").int64_values.values.append(1)
    err = grpc_error(raw_join, req.SerializeToString())
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_grpc_duplicate_entity_column(raw_join: Any) -> None:
    req = pb.JoinRequest(features=["user_profile:age"])
    req.entities.add(name="user_id").int64_values.values.append(1)
    req.entities.add(name="user_id").int64_values.values.append(2)
    err = grpc_error(raw_join, req.SerializeToString())
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "twice" in err.details()


def test_server_still_healthy_after_abuse(server: ServerProcess) -> None:
    status, doc = server.join({"entities": {"user_id": [1]}, "features": ["user_profile:age"]})
    assert status == 200 and doc["results"][1]["values"] == [72]


def merchant_push(**overrides: list[Any]) -> dict[str, Any]:
    rows: dict[str, list[Any]] = {
        "merchant_id": ["push-bad"],
        "risk_score": [0.5],
        "is_blocked": [False],
        "opened_at": ["2024-01-01T00:00:00Z"],
        "embedding": [[1.0, 2.0]],
        "txn_count": [1],
        "label": ["x"],
    }
    rows.update(overrides)
    return {"feature_view": "merchant", "rows": rows}


@pytest.mark.parametrize(
    ("body", "needles"),
    [
        # float32 cannot hold it: refused, not stored as infinity
        (merchant_push(embedding=[[1.0, 1e300]]), ["'embedding'", "row 0", "element 1", "float32"]),
        (merchant_push(risk_score=[10**400]), ["'risk_score'", "row 0", "float64 range"]),
        (merchant_push(txn_count=[2**63]), ["'txn_count'", "row 0", "int64 range"]),
        (merchant_push(embedding=[[1.0, "x"]]), ["'embedding'", "element 1", "str"]),
    ],
    ids=["float32 overflow", "float64 overflow", "int64 overflow", "vector element type"],
)
def test_push_value_out_of_range_is_400_naming_the_column(
    server: ServerProcess, body: dict[str, Any], needles: list[str]
) -> None:
    status, raw, headers = http_post(server.url + "/v1/feature/push", json.dumps(body).encode())
    assert headers["content-type"] == "application/json"
    err = json.loads(raw)["error"]
    assert status == 400 and err["code"] == "INVALID_ARGUMENT", err
    for needle in needles:
        assert needle in err["message"], (needle, err["message"])


def test_grpc_push_wrong_type_is_invalid_argument(server: ServerProcess) -> None:
    req = pb.PushRequest(feature_view="merchant")
    req.columns.add(name="merchant_id").string_values.values.append("push-bad")
    req.columns.add(name="risk_score").string_values.values.append("high")
    with grpc.insecure_channel(server.grpc_target) as ch:
        push = ch.unary_unary("/featurestore.v1.FeatureService/Push")
        with pytest.raises(grpc.RpcError) as info:
            push(req.SerializeToString(), timeout=5)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "'risk_score'" in info.value.details()


def test_grpc_push_null_rows_past_the_values_is_invalid_argument(server: ServerProcess) -> None:
    """A null_rows index past a column's values was ignored, so the push wrote a value
    where the caller meant a null (or a column shorter than meant)."""
    req = pb.PushRequest(feature_view="merchant")
    req.columns.add(name="merchant_id").string_values.values.append("push-nulls")
    risk = req.columns.add(name="risk_score")
    risk.double_values.values.append(0.5)
    risk.null_rows.append(3)
    with grpc.insecure_channel(server.grpc_target) as ch:
        push = ch.unary_unary("/featurestore.v1.FeatureService/Push")
        with pytest.raises(grpc.RpcError) as info:
            push(req.SerializeToString(), timeout=5)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "risk_score.null_rows: row 3 is past its 1 values" in info.value.details()


def test_grpc_push_without_a_feature_view_is_invalid_argument(server: ServerProcess) -> None:
    """As over HTTP (the schema's minLength), not NOT_FOUND "unknown feature view ''"."""
    req = pb.PushRequest()
    req.columns.add(name="merchant_id").string_values.values.append("m-1")
    with grpc.insecure_channel(server.grpc_target) as ch:
        push = ch.unary_unary("/featurestore.v1.FeatureService/Push")
        with pytest.raises(grpc.RpcError) as info:
            push(req.SerializeToString(), timeout=5)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "feature_view is empty" in info.value.details()
