"""gRPC Join marks its calls as lone calls (featurestore/lone_calls.py) in each call's
own task, so the Redis store's reads of those calls may wait for company, and no other
request on the same event loop is marked: a real grpc.aio server (in-process), a real
client, HTTP through the same engine."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
import pytest

from featurestore import metrics
from featurestore.api.grpc import JOIN_METHOD, GrpcApi, create_server
from featurestore.config import GrpcConfig
from featurestore.join import JoinEngine, JoinRequest, JoinResult
from featurestore.lone_calls import LONE_CALLS
from featurestore.push import PushService
from tests.unit.test_api_edges import client, http_api, join_message, make_engine


class RecordingEngine(JoinEngine):
    """Notes what ``LONE_CALLS`` holds inside each join (where the store reads)."""

    def __init__(self, base: JoinEngine) -> None:
        super().__init__(base.stores, base.state, base.limits)
        self.seen: list[Any] = []

    async def join(self, req: JoinRequest, deadline: float, span: Any = None) -> JoinResult:
        calls = LONE_CALLS.get()
        self.seen.append(calls if calls is None else (calls, calls.value))
        return await super().join(req, deadline, span)


Serve = Callable[[JoinEngine, bool], Awaitable[int]]


@pytest.fixture
async def served() -> AsyncIterator[Serve]:
    servers: list[grpc.aio.Server] = []

    async def serve(engine: JoinEngine, unary_join: bool) -> int:
        api = GrpcApi(engine, PushService(engine), deadline_ms=500, unary_join=unary_join)
        server = create_server(1 << 20, GrpcConfig(), reuse_port=False)
        api.register(server)
        port: int = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        servers.append(server)
        return port

    yield serve
    for server in servers:
        await server.stop(0)


@pytest.mark.parametrize("unary_join", [False, True], ids=["client-streaming", "unary"])
async def test_a_grpc_join_runs_as_a_lone_call_counted_by_the_grpc_in_flight_gauge(
    served: Serve, unary_join: bool
) -> None:
    engine = RecordingEngine(make_engine())
    port = await served(engine, unary_join)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        await channel.unary_unary(JOIN_METHOD)(join_message("fast", [1]), timeout=5)
    [(calls, in_flight)] = engine.seen
    assert calls is metrics.inflight("grpc") and in_flight >= 1  # itself, at least


async def test_no_other_request_on_the_loop_is_marked_as_a_lone_call(served: Serve) -> None:
    engine = RecordingEngine(make_engine())
    port = await served(engine, False)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        for _ in range(3):
            await channel.unary_unary(JOIN_METHOD)(join_message("fast", [1]), timeout=5)
    async with client(http_api(engine)) as http:
        body = {"features": ["fast:a"], "entities": {"user_id": [1]}}
        assert (await http.post("/v1/feature/join", json=body)).status_code == 200
    assert engine.seen[-1] is None  # the HTTP join, after three gRPC calls on the same loop
    assert all(seen is not None for seen in engine.seen[:3])
    assert LONE_CALLS.get() is None  # nor the test's own task
