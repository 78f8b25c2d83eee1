"""An error about a name the caller sent stays short whatever the name's length. A gRPC
status message travels as the grpc-message trailer, percent-encoded, and a client with
grpc's default metadata limits (8 KiB, dropped at random above it, always above 16 KiB)
fails such a call as RESOURCE_EXHAUSTED instead of with its status; an HTTP error body
repeated the name too. A real grpc.aio server and client, and the HTTP app in-process."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import grpc
import pytest

from featurestore.api.errors import GRPC_MESSAGE_BYTES, grpc_message
from featurestore.api.grpc import JOIN_METHOD, PUSH_METHOD, GrpcApi, create_server
from featurestore.api.routes import JOIN_PATH, PUSH_PATH
from featurestore.config import GrpcConfig
from featurestore.errors import NotFound
from featurestore.join import JoinEngine, JoinRequest, JoinResult
from featurestore.push import PushService
from featurestore.v1 import featurestore_pb2 as pb
from tests.unit.test_api_edges import client, http_api, make_engine

LONG = 20_000
CALLS = 5  # a trailer between the soft and the hard limit is dropped at random
HTTP_BODY_BYTES = 2048  # what an error body stays under, with the name in message and details


def join_body(**body: Any) -> dict[str, Any]:
    return {"entities": {"user_id": [1]}, "features": ["fast:a"], **body}


JOINS = {  # (body, gRPC code, HTTP status, the start of the message)
    "unknown view": (
        join_body(features=["v" * LONG + ":a"]),
        grpc.StatusCode.NOT_FOUND,
        404,
        "unknown feature view 'vvvv",
    ),
    "unknown view, not ASCII": (
        join_body(features=["é" * LONG + ":a"]),  # 2 bytes of UTF-8, 6 percent-encoded
        grpc.StatusCode.NOT_FOUND,
        404,
        "unknown feature view 'éééé",
    ),
    "unknown feature": (
        join_body(features=["fast:" + "f" * LONG]),
        grpc.StatusCode.NOT_FOUND,
        404,
        "feature view 'fast' has no feature 'ffff",
    ),
    "unknown service": (
        {"entities": {"user_id": [1]}, "feature_service": "s" * LONG},
        grpc.StatusCode.NOT_FOUND,
        404,
        "unknown feature service 'ssss",
    ),
    "unknown entity": (
        join_body(entities={"user_id": [1], "e" * LONG: [1]}),
        grpc.StatusCode.INVALID_ARGUMENT,
        400,
        "unknown entity 'eeee",
    ),
    "bad reference": (
        join_body(features=["x" * LONG]),
        grpc.StatusCode.INVALID_ARGUMENT,
        400,
        "'xxxx",
    ),
    "ragged entity columns": (
        join_body(entities={"user_id": [1], "e" * LONG: [1, 2]}),
        grpc.StatusCode.INVALID_ARGUMENT,
        400,
        "entity columns have different lengths (user_id=1, eeee",
    ),
}


def join_message(body: dict[str, Any]) -> pb.JoinRequest:
    req = pb.JoinRequest(features=body.get("features", []), feature_service=body.get("feature_service", ""))
    for name, keys in body["entities"].items():
        req.entities.add(name=name).int64_values.values.extend(keys)
    return req


def push_message(view: str, columns: dict[str, list[int]]) -> pb.PushRequest:
    req = pb.PushRequest(feature_view=view)
    for name, values in columns.items():
        req.columns.add(name=name).int64_values.values.extend(values)
    return req


PUSHES = {  # (view, columns, gRPC code, HTTP status, the start of the message)
    "unknown view": (
        "v" * LONG,
        {"user_id": [1], "a": [1]},
        grpc.StatusCode.NOT_FOUND,
        404,
        "unknown feature",
    ),
    "unknown column": (
        "fast",
        {"user_id": [1], "a": [1], "c" * LONG: [1]},
        grpc.StatusCode.INVALID_ARGUMENT,
        400,
        "push to 'fast': column 'cccc",
    ),
}


class FailingEngine(JoinEngine):
    """Every join fails with a message of 60,000 bytes, most of them not ASCII."""

    def __init__(self, base: JoinEngine) -> None:
        super().__init__(base.stores, base.state, base.limits)

    async def join(self, req: JoinRequest, deadline: float, span: Any = None) -> JoinResult:
        raise NotFound("z" * LONG + "é" * LONG)


@asynccontextmanager
async def served(engine: JoinEngine) -> AsyncIterator[grpc.aio.Channel]:
    """A grpc.aio server for the engine, and a client of grpc's default metadata limits."""
    api = GrpcApi(engine, PushService(engine), deadline_ms=5000)
    server = create_server(1 << 20, GrpcConfig(), reuse_port=False)
    api.register(server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
            yield ch
    finally:
        await server.stop(0)


@pytest.fixture
async def channel() -> AsyncIterator[grpc.aio.Channel]:
    async with served(make_engine()) as ch:
        yield ch


async def refusals(call: Any, message: Any) -> list[tuple[grpc.StatusCode, str]]:
    seen = []
    for _ in range(CALLS):
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await call(message.SerializeToString(), timeout=10)
        seen.append((e.value.code(), e.value.details() or ""))
    return seen


def assert_bounded(message: str, start: str) -> None:
    assert message.startswith(start), message[:200]
    assert len(message.encode()) <= GRPC_MESSAGE_BYTES, len(message.encode())


@pytest.mark.parametrize("case", JOINS)
async def test_a_join_naming_a_20_kb_name_is_answered_with_its_own_code_and_a_short_message(
    channel: grpc.aio.Channel, case: str
) -> None:
    body, code, status, start = JOINS[case]
    for got, message in await refusals(channel.unary_unary(JOIN_METHOD), join_message(body)):
        assert got == code, (got, message[:200])  # never RESOURCE_EXHAUSTED
        assert_bounded(message, start)
    async with client(http_api(make_engine(), max_body_bytes=1 << 20)) as c:
        r = await c.post(JOIN_PATH, content=json.dumps(body, ensure_ascii=False).encode())
    assert r.status_code == status
    assert len(r.content) <= HTTP_BODY_BYTES, len(r.content)
    assert_bounded(r.json()["error"]["message"], start)


@pytest.mark.parametrize("case", PUSHES)
async def test_a_push_naming_a_20_kb_name_is_answered_with_its_own_code_and_a_short_message(
    channel: grpc.aio.Channel, case: str
) -> None:
    view, columns, code, status, start = PUSHES[case]
    for got, message in await refusals(channel.unary_unary(PUSH_METHOD), push_message(view, columns)):
        assert got == code, (got, message[:200])
        assert_bounded(message, start)
    async with client(http_api(make_engine(), max_body_bytes=1 << 20)) as c:
        r = await c.post(PUSH_PATH, json={"feature_view": view, "rows": columns})
    assert r.status_code == status
    assert len(r.content) <= HTTP_BODY_BYTES, len(r.content)
    assert_bounded(r.json()["error"]["message"], start)


async def test_a_request_data_field_of_a_20_kb_name_is_named_shortly(channel: grpc.aio.Channel) -> None:
    name = "r" * LONG
    req = join_message(join_body())
    for _ in range(2):
        req.request_data.add(name=name).double_values.values.append(1.0)
    for got, message in await refusals(channel.unary_unary(JOIN_METHOD), req):
        assert got == grpc.StatusCode.INVALID_ARGUMENT, (got, message[:200])
        assert_bounded(message, "request_data field 'rrrr")
    async with client(http_api(make_engine(), max_body_bytes=1 << 20)) as c:
        r = await c.post(JOIN_PATH, json=join_body(request_data={name: 1.5}))  # not an array
    assert r.status_code == 400
    assert len(r.content) <= HTTP_BODY_BYTES, len(r.content)
    assert_bounded(r.json()["error"]["message"], "invalid join request: Expected `array`, got `float`")
    assert r.json()["error"]["details"] == [{"request_data": "r" * 100 + "..."}]


async def test_a_grpc_status_message_is_cut_to_1_kib_saying_so() -> None:
    async with served(FailingEngine(make_engine())) as ch:
        seen = await refusals(ch.unary_unary(JOIN_METHOD), join_message(join_body()))
    for code, message in seen:
        assert code == grpc.StatusCode.NOT_FOUND
        assert message.startswith("zzzz") and message.endswith("... (message shortened from 60000 bytes)")
        assert len(message.encode()) <= GRPC_MESSAGE_BYTES


@pytest.mark.parametrize("size", [1023, 1024, 1025, 3000])
def test_a_long_message_is_cut_on_a_character_boundary(size: int) -> None:
    for filler in ("a", "é", "😀"):
        message = "x" * (size % 4) + filler * size
        out = grpc_message(message)
        data = message.encode()
        if len(data) <= GRPC_MESSAGE_BYTES:
            assert out == message
            continue
        assert len(out.encode()) <= GRPC_MESSAGE_BYTES
        assert out.endswith(f"... (message shortened from {len(data)} bytes)")
        assert message.startswith(out.split("...")[0])  # no character broken or replaced
    assert grpc_message("bad \udc80 surrogate") == "bad \\udc80 surrogate"  # grpc would not encode it
