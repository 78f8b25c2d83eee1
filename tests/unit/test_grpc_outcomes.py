"""gRPC calls are counted as their client saw them: a real grpc.aio server (in-process)
and a real client. When the event loop stalls (a long GC pause, CPU-bound work), calls
time out while they wait for the loop, or are answered after their deadline; the
client sees DEADLINE_EXCEEDED for each, and so must featurestore_requests_total."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from prometheus_client import REGISTRY
from starlette.types import Message

from featurestore import metrics
from featurestore.api.grpc import JOIN_METHOD
from featurestore.api.routes import JOIN_PATH
from featurestore.join import JoinEngine, JoinRequest, JoinResult
from tests.support import eventually
from tests.unit.conftest import Serve
from tests.unit.test_api_edges import HANG_GUARD, frozen, http_api, join_message, make_engine, sample

OUTCOMES = ("ok", "partial", "CANCELLED", "DEADLINE_EXCEEDED", "INVALID_ARGUMENT")
CALLS = 6
DEADLINE = 0.1  # seconds, the clients' deadline
STALL = 0.3  # seconds the server's event loop is held: longer than the deadline


def counted() -> Counter[str]:
    return Counter({o: int(sample("featurestore_requests_total", JOIN_METHOD, "grpc", o)) for o in OUTCOMES})


class StallingEngine(JoinEngine):
    """Holds the event loop for STALL after each join, before the answer is sent."""

    def __init__(self, base: JoinEngine) -> None:
        super().__init__(base.stores, base.state, base.limits)

    async def join(self, req: JoinRequest, deadline: float, span: Any = None) -> JoinResult:
        result = await super().join(req, deadline, span)
        time.sleep(STALL)  # noqa: ASYNC251 - the stall under test
        return result


def call_all(port: int, go: threading.Event, seen: Counter[str]) -> None:
    """CALLS joins at once with DEADLINE each, once ``go`` is set; what the client saw
    goes into ``seen``."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        join = channel.unary_unary(JOIN_METHOD)
        grpc.channel_ready_future(channel).result(timeout=HANG_GUARD)
        go.wait(HANG_GUARD)
        futures = [join.future(join_message("fast", [1]), timeout=DEADLINE) for _ in range(CALLS)]
        for future in futures:
            try:
                future.result()
                seen["answered"] += 1
            except grpc.RpcError as e:
                seen[e.code().name] += 1


async def run_clients(port: int, stall_while_sending: bool) -> tuple[Counter[str], Counter[str]]:
    """(what the client saw, what the server counted) for CALLS joins."""
    before = counted()
    go, seen = threading.Event(), Counter[str]()
    client = threading.Thread(target=call_all, args=(port, go, seen))
    client.start()
    go.set()
    if stall_while_sending:
        time.sleep(STALL)  # noqa: ASYNC251 - the stall under test: the calls wait for the loop
    await eventually(lambda: not client.is_alive(), HANG_GUARD, "the client's answers")
    await eventually(lambda: sum((counted() - before).values()) >= CALLS, HANG_GUARD, "every call counted")
    return seen, counted() - before


async def test_calls_that_time_out_waiting_for_the_loop_are_deadline_exceeded(
    served: Serve,
) -> None:
    port = await served(make_engine())
    seen, server = await run_clients(port, stall_while_sending=True)
    assert seen["DEADLINE_EXCEEDED"] >= 1  # the stall outlasts the deadline
    assert server["DEADLINE_EXCEEDED"] == seen["DEADLINE_EXCEEDED"]
    assert server["partial"] == seen["answered"]  # 'fast' has no data in the store: partial
    assert sum(server.values()) == CALLS


async def test_an_answer_sent_after_the_deadline_is_deadline_exceeded(
    served: Serve,
) -> None:
    port = await served(StallingEngine(make_engine()))
    seen, server = await run_clients(port, stall_while_sending=False)
    assert seen == Counter({"DEADLINE_EXCEEDED": CALLS})
    assert server == Counter({"DEADLINE_EXCEEDED": CALLS})


async def test_a_call_the_client_cancels_is_cancelled(served: Serve) -> None:
    engine = make_engine(deadline_seconds=60)
    port = await served(engine)
    before = counted()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.unary_unary(JOIN_METHOD)(join_message("slow", [1]), timeout=60)
        await asyncio.wait_for(frozen(engine).entered.wait(), HANG_GUARD)
        call.cancel()
    await eventually(lambda: counted() != before, HANG_GUARD, "the call counted")
    assert counted() - before == Counter({"CANCELLED": 1})


async def test_a_call_without_a_request_message_is_invalid_argument(
    served: Serve,
) -> None:
    port = await served(make_engine())
    before = counted()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await channel.stream_unary(JOIN_METHOD)(iter(()), timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "no request message" in (info.value.details() or "")
    await eventually(lambda: counted() != before, HANG_GUARD, "the call counted")
    assert counted() - before == Counter({"INVALID_ARGUMENT": 1})


async def test_a_call_cancelled_before_its_message_is_sent_is_cancelled_not_invalid_argument(
    served: Serve,
) -> None:
    port = await served(make_engine())
    before = counted()
    never = asyncio.Event()

    async def no_message_yet() -> AsyncIterator[bytes]:
        await never.wait()  # the message is never sent: the client cancels first
        yield b""

    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.stream_unary(JOIN_METHOD)(no_message_yet(), timeout=10)
        await asyncio.sleep(0.2)  # the server's handler waits in context.read()
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
    await eventually(lambda: counted() != before, HANG_GUARD, "the call counted")
    assert counted() - before == Counter({"CANCELLED": 1})


async def test_the_configured_deadline_counts_from_the_call_s_start_not_from_its_message(
    served: Serve,
) -> None:
    """limits.deadline_ms (500 ms here) bounds the whole call: a message that arrives after
    it has passed is DEADLINE_EXCEEDED before any store is read (it used to be answered)."""
    port = await served(make_engine())

    async def late_message() -> AsyncIterator[bytes]:
        await asyncio.sleep(0.6)
        yield join_message("fast", [1])

    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await channel.stream_unary(JOIN_METHOD)(late_message(), timeout=10)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


def in_flight(protocol: str) -> float:
    metrics.flush()
    return REGISTRY.get_sample_value("featurestore_inflight_requests", {"protocol": protocol}) or 0.0


async def test_a_join_waiting_for_its_message_is_in_flight_as_an_http_join_reading_its_body_is(
    served: Serve,
) -> None:
    """featurestore_inflight_requests counts a join from its start on both protocols
    (gRPC used to count it only once admitted, after its message)."""
    port = await served(make_engine())
    never = asyncio.Event()

    async def no_message_yet() -> AsyncIterator[bytes]:
        await never.wait()
        yield b""

    before = in_flight("grpc")
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.stream_unary(JOIN_METHOD)(no_message_yet(), timeout=10)
        await eventually(lambda: in_flight("grpc") == before + 1, HANG_GUARD, "the gRPC join in flight")
        call.cancel()
    await eventually(lambda: in_flight("grpc") == before, HANG_GUARD, "the gRPC join gone")

    async def body_never_comes() -> Message:
        await never.wait()
        raise AssertionError("unreachable")

    async def send(message: Message) -> None:
        pass

    before = in_flight("http")
    scope = {"type": "http", "method": "POST", "path": JOIN_PATH, "headers": [(b"content-length", b"100")]}
    request = asyncio.create_task(http_api(make_engine())(scope, body_never_comes, send))
    await eventually(lambda: in_flight("http") == before + 1, HANG_GUARD, "the HTTP join in flight")
    request.cancel()
    await eventually(lambda: in_flight("http") == before, HANG_GUARD, "the HTTP join gone")
