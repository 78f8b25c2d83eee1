"""gRPC Join marks its calls as lone calls (featurestore/lone_calls.py) in each call's
own task, so the Redis store's reads of those calls may wait for company, and no later
call on the same server inherits the mark: a real grpc.aio server (in-process), a real
client."""

from __future__ import annotations

from typing import Any

import grpc
import pytest

from featurestore import metrics
from featurestore.api.grpc import JOIN_METHOD, PUSH_METHOD
from featurestore.join import JoinEngine, JoinRequest, JoinResult
from featurestore.lone_calls import LONE_CALLS
from featurestore.push import PushRequest, PushResult, PushService
from featurestore.v1 import featurestore_pb2 as pb
from tests.unit.conftest import Serve
from tests.unit.test_api_edges import join_message, make_engine


class RecordingEngine(JoinEngine):
    """Notes what ``LONE_CALLS`` holds inside each join (where the store reads)."""

    def __init__(self, base: JoinEngine) -> None:
        super().__init__(base.stores, base.state, base.limits)
        self.seen: list[Any] = []

    async def join(self, req: JoinRequest, deadline: float, span: Any = None) -> JoinResult:
        calls = LONE_CALLS.get()
        self.seen.append(calls if calls is None else (calls, calls.value))
        return await super().join(req, deadline, span)


@pytest.mark.parametrize("unary_join", [False, True], ids=["client-streaming", "unary"])
async def test_a_grpc_join_runs_as_a_lone_call_counted_by_the_grpc_in_flight_gauge(
    served: Serve, unary_join: bool
) -> None:
    engine = RecordingEngine(make_engine())
    port = await served(engine, unary_join=unary_join)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        await channel.unary_unary(JOIN_METHOD)(join_message("fast", [1]), timeout=5)
    [(calls, in_flight)] = engine.seen
    assert calls is metrics.inflight("grpc") and in_flight >= 1  # itself, at least


class RecordingPush(PushService):
    """Notes what ``LONE_CALLS`` holds inside each push (a call that does not mark itself)."""

    def __init__(self, engine: JoinEngine) -> None:
        super().__init__(engine)
        self.seen: list[Any] = []

    async def push(self, req: PushRequest, deadline: float | None = None) -> PushResult:
        self.seen.append(LONE_CALLS.get())
        return await super().push(req, deadline)


async def test_a_later_call_on_the_same_server_does_not_inherit_a_joins_mark(served: Serve) -> None:
    # Were grpc.aio to run its handlers in one task (one context), the joins' mark would
    # still be set when the push runs.
    engine = RecordingEngine(make_engine())
    pushes = RecordingPush(engine)
    port = await served(engine, push=pushes)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        for _ in range(3):
            await channel.unary_unary(JOIN_METHOD)(join_message("fast", [1]), timeout=5)
        push = pb.PushRequest(feature_view="fast")
        push.columns.add(name="user_id").int64_values.values.append(1)
        push.columns.add(name="a").int64_values.values.append(2)
        await channel.unary_unary(PUSH_METHOD)(push.SerializeToString(), timeout=5)
    assert [seen is not None for seen in engine.seen] == [True, True, True]
    assert pushes.seen == [None]
    assert LONE_CALLS.get() is None  # nor the test's own task
