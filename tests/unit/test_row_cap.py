"""The row cap of the load shedder: a decoded join whose entity rows would take those in
flight past ``limits.shed_max_rows`` is shed (HTTP 503 with Retry-After, gRPC
RESOURCE_EXHAUSTED, reason ``rows``), its admission undone; a join alone is never shed
for its own size, and one over ``limits.max_rows`` gets its 413, not a 503."""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import AsyncIterator

import grpc
import pytest

from featurestore.api.grpc import JOIN_METHOD, GrpcApi, create_server
from featurestore.api.http import JoinEndpoint
from featurestore.config import GrpcConfig, LimitsConfig
from featurestore.overload import LoadShedder
from featurestore.push import PushService
from featurestore.row_cap import MAX_ROWS, ROWS, RowCap, entity_rows
from tests.support import eventually
from tests.unit.test_api_edges import HANG_GUARD, frozen, join_message, make_engine
from tests.unit.test_overload import CpuClock, shed_count

CAP = 10


def test_a_join_alone_is_taken_whatever_its_rows() -> None:
    cap = RowCap(CAP)
    assert cap.take(CAP * 5) and cap.rows == CAP * 5
    assert not cap.take(1)  # nothing more beside it
    cap.give(CAP * 5)
    assert cap.rows == 0 and cap.take(1)


def test_joins_are_taken_up_to_the_cap_and_not_past_it() -> None:
    cap = RowCap(CAP)
    assert cap.take(6) and cap.take(4) and cap.rows == CAP  # exactly the cap
    assert not cap.take(1) and cap.rows == CAP  # a refusal counts nothing in
    cap.give(4)
    assert not cap.take(5) and cap.take(4)


def test_no_cap_takes_everything() -> None:
    cap = RowCap(math.inf)
    assert all(cap.take(10_000) for _ in range(100))


def test_a_joins_rows_are_its_first_key_columns_and_none_past_max_rows() -> None:
    assert entity_rows({"user_id": [1, 2, 3], "item_id": [4, 5, 6]}, 100) == 3
    assert entity_rows({"user_id": list(range(100))}, 100) == 100
    assert entity_rows({"user_id": list(range(101))}, 100) == 0  # the join's 413, not a load
    assert entity_rows({}, 100) == 0


def test_a_join_shed_for_its_rows_is_no_longer_in_flight_and_counts_as_refused() -> None:
    s = LoadShedder(1024, 0.005, max_rows=CAP, cpu_clock=CpuClock())
    assert s.admit() is None and s.admit_rows(8) is None
    assert s.admit() is None and s.admit_rows(5) == ROWS
    assert (s.inflight, s.rows.rows, s._refused, s._completed) == (1, 8, 1, 0)
    s.done(8)
    assert (s.inflight, s.rows.rows, s._completed) == (0, 0, 1)
    assert s.admit() is None and s.admit_rows(5) is None  # room again


def test_the_row_cap_is_shed_max_rows_and_none_without_shedding() -> None:
    assert LoadShedder.from_limits(LimitsConfig()).rows.cap == MAX_ROWS == LimitsConfig().shed_max_rows
    assert LoadShedder.from_limits(LimitsConfig(shed_max_rows=500)).rows.cap == 500
    assert LoadShedder.from_limits(LimitsConfig(shed=False)).rows.cap == math.inf


def body(users: list[int], view: str = "slow") -> bytes:
    feature = {"slow": "x", "fast": "a"}[view]
    return json.dumps({"entities": {"user_id": users}, "features": [f"{view}:{feature}"]}).encode()


async def test_an_http_join_past_the_row_cap_is_shed_with_retry_after_and_one_over_max_rows_gets_413() -> (
    None
):
    engine = make_engine(deadline_seconds=60)  # max_rows 100
    shedder = LoadShedder(1024, 0.005, max_rows=CAP, cpu_clock=CpuClock())
    endpoint = JoinEndpoint(engine, 60_000, shedder)
    held = asyncio.ensure_future(
        endpoint(body(list(range(1, 9))), None, None, None)
    )  # 8 rows, on a frozen store
    await asyncio.wait_for(frozen(engine).entered.wait(), HANG_GUARD)
    before = shed_count("http", ROWS)
    try:
        status, _, out, headers = await endpoint(body([1, 2, 3, 4, 5], "fast"), None, None, None)
        assert status == 503 and headers == ((b"retry-after", b"1"),)
        assert json.loads(out)["error"]["details"] == [{"reason": "rows", "retry_after_seconds": 1}]
        assert shed_count("http", ROWS) == before + 1
        assert (await endpoint(body([1, 2], "fast"), None, None, None))[0] == 200  # 10 rows: within
        assert (await endpoint(body(list(range(101)), "fast"), None, None, None))[0] == 413  # over max_rows
        assert (shedder.inflight, shedder.rows.rows) == (1, 8)
    finally:
        held.cancel()
        with pytest.raises(asyncio.CancelledError):
            await held
    assert (shedder.inflight, shedder.rows.rows) == (0, 0)


@pytest.fixture
async def grpc_join() -> AsyncIterator[tuple[grpc.aio.UnaryUnaryMultiCallable, LoadShedder]]:
    engine = make_engine(deadline_seconds=60)
    shedder = LoadShedder(1024, 0.005, max_rows=CAP, cpu_clock=CpuClock())
    api = GrpcApi(engine, PushService(engine), deadline_ms=60_000, shedder=shedder)
    server = create_server(1 << 20, GrpcConfig(), reuse_port=False)
    api.register(server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield channel.unary_unary(JOIN_METHOD), shedder
    finally:
        await server.stop(0)


async def test_a_grpc_join_past_the_row_cap_is_resource_exhausted_with_retry_after(
    grpc_join: tuple[grpc.aio.UnaryUnaryMultiCallable, LoadShedder],
) -> None:
    join, shedder = grpc_join
    held = join(join_message("slow", list(range(1, 9))), timeout=30)
    await eventually(lambda: shedder.rows.rows == 8, HANG_GUARD, "the join of 8 rows to wait on the store")
    before = shed_count("grpc", ROWS)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await join(join_message("fast", [1, 2, 3, 4, 5]), timeout=5)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "(rows)" in (
        info.value.details() or ""
    )
    assert ("retry-after", "1") in tuple(info.value.trailing_metadata() or ())
    assert shed_count("grpc", ROWS) == before + 1
    assert await join(join_message("fast", [1, 2]), timeout=5)  # 10 rows: within
    assert (shedder.inflight, shedder.rows.rows) == (1, 8)
    held.cancel()
    await eventually(lambda: shedder.inflight == 0, HANG_GUARD, "the cancelled join to end")
    assert shedder.rows.rows == 0
