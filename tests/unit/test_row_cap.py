"""The row cap of the load shedder: while the worker's event loop was late in the last
interval, a decoded join whose entity rows would take those in flight past
``limits.shed_max_rows`` is shed (HTTP 503 with Retry-After, gRPC RESOURCE_EXHAUSTED,
reason ``rows``), its admission undone; joins waiting on a slow store with the loop on
time are not; a join alone is never shed for its own size, and one over
``limits.max_rows`` gets its 413, not a 503."""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import AsyncIterator

import grpc
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from featurestore.api.grpc import JOIN_METHOD
from featurestore.api.http import JoinEndpoint
from featurestore.config import LimitsConfig
from featurestore.overload import ROW_CAP_SAMPLES, LoadShedder
from featurestore.row_cap import MAX_ROWS, ROWS, RowCap, entity_rows
from featurestore.v1 import featurestore_pb2 as pb
from tests.support import eventually
from tests.unit.conftest import Serve
from tests.unit.test_api_edges import HANG_GUARD, counts, frozen, join_message, make_engine
from tests.unit.test_overload import CpuClock, samples, shed_count

CAP = 10
JOIN_ROUTE = "/v1/feature/join"


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


def test_a_join_of_no_rows_is_taken_even_past_the_cap() -> None:
    cap = RowCap(CAP)
    assert cap.take(CAP * 2) and cap.take(0)  # (one over max_rows counts 0: its 413 comes next)


def test_unbound_takes_count_the_rows_past_the_cap() -> None:
    cap = RowCap(CAP)
    assert cap.take(8) and cap.take(8, bound=False) and cap.rows == 16
    assert not cap.take(1)


def test_no_cap_takes_everything() -> None:
    cap = RowCap(math.inf)
    assert all(cap.take(10_000) for _ in range(100))


def test_a_joins_rows_are_its_first_key_columns_and_none_past_max_rows() -> None:
    assert entity_rows({"user_id": [1, 2, 3], "item_id": [4, 5, 6]}, 100) == 3
    assert entity_rows({"user_id": list(range(100))}, 100) == 100
    assert entity_rows({"user_id": list(range(101))}, 100) == 0  # the join's 413, not a load
    assert entity_rows({}, 100) == 0


def late_shedder() -> LoadShedder:
    """A shedder with the row cap, its loop late at its last sample."""
    s = LoadShedder(1024, 0.005, max_rows=CAP, cpu_clock=CpuClock())
    samples(s, [0.05])
    return s


def test_a_join_shed_for_its_rows_is_no_longer_in_flight_and_counts_as_refused() -> None:
    s = late_shedder()
    assert s.admit() is None and s.admit_rows(8) is None
    assert s.admit() is None and s.admit_rows(5) == ROWS
    assert (s.inflight, s.rows.rows, s._refused, s._completed) == (1, 8, 1, 0)
    s.done(8)
    assert (s.inflight, s.rows.rows, s._completed) == (0, 0, 1)
    assert s.admit() is None and s.admit_rows(5) is None  # room again


def test_rows_past_the_cap_are_not_shed_while_the_loop_keeps_time() -> None:
    s = LoadShedder(1024, 0.005, max_rows=CAP, cpu_clock=CpuClock())
    samples(s, [0.0] * 3)  # joins waiting on a slow store, the loop idle
    assert s.admit() is None and s.admit_rows(8) is None
    assert s.admit() is None and s.admit_rows(5) is None and s.rows.rows == 13  # counted in
    at = samples(s, [0.05], start=2.0)
    assert s.admit() is None and s.admit_rows(1) == ROWS  # late: bound
    at = samples(s, [0.0] * (ROW_CAP_SAMPLES - 1), start=at)
    assert s.admit() is None and s.admit_rows(1) == ROWS  # a late sample within the last interval
    samples(s, [0.0], start=at)
    assert s.admit() is None and s.admit_rows(1) is None  # an interval on time: unbound again


async def test_a_cancelled_watch_leaves_the_row_cap_open() -> None:
    s = LoadShedder(1024, 0.005, max_rows=CAP, cpu_clock=CpuClock())
    watch = asyncio.create_task(s.watch())
    await asyncio.sleep(0.05)
    s.observe(0.05, 1.0)  # a late sample just before it ends
    watch.cancel()
    with pytest.raises(asyncio.CancelledError):
        await watch
    assert s.admit_rows(8) is None and s.admit_rows(8) is None


async def test_joins_waiting_on_a_frozen_store_leave_the_loop_on_time_and_past_the_cap_are_not_shed() -> None:
    """With the shedder sampling the running loop at the default 5 ms target: the loop
    idles while 8 rows wait on the store, so a join of 5 more is answered (on a loaded
    machine a late sample may bind the cap for 100 ms: the probe is tried until then)."""
    engine = make_engine(deadline_seconds=60)
    shedder = LoadShedder.from_limits(LimitsConfig(shed_max_rows=CAP))
    endpoint = JoinEndpoint(engine, 60_000, shedder)
    watch = asyncio.create_task(shedder.watch())
    held = asyncio.ensure_future(endpoint(body(list(range(1, 9))), None, None, None))
    try:
        await asyncio.wait_for(frozen(engine).entered.wait(), HANG_GUARD)

        async def probe() -> bool:
            return (await endpoint(body([1, 2, 3, 4, 5], "fast"), None, None, None))[0] == 200

        await eventually(probe, HANG_GUARD, "a join past the cap to be answered while the loop idles")
        assert shedder.rows.rows == 8
    finally:
        held.cancel()
        watch.cancel()
        await asyncio.gather(held, watch, return_exceptions=True)


def test_the_row_cap_is_shed_max_rows_and_none_without_shedding() -> None:
    assert LoadShedder.from_limits(LimitsConfig()).rows.cap == MAX_ROWS == LimitsConfig().shed_max_rows
    assert LoadShedder.from_limits(LimitsConfig(shed_max_rows=500)).rows.cap == 500
    assert LoadShedder.from_limits(LimitsConfig(shed=False)).rows.cap == math.inf


def body(users: list[int], view: str = "slow") -> bytes:
    feature = {"slow": "x", "fast": "a"}[view]
    return json.dumps({"entities": {"user_id": users}, "features": [f"{view}:{feature}"]}).encode()


async def test_an_http_join_past_the_row_cap_is_shed_with_retry_after_and_one_over_max_rows_gets_413(
    spans: InMemorySpanExporter,
) -> None:
    engine = make_engine(deadline_seconds=60)  # max_rows 100
    shedder = late_shedder()
    endpoint = JoinEndpoint(engine, 60_000, shedder)
    held = asyncio.ensure_future(
        endpoint(body(list(range(1, 9))), None, None, None)
    )  # 8 rows, on a frozen store
    await asyncio.wait_for(frozen(engine).entered.wait(), HANG_GUARD)
    before, outcomes = shed_count("http", ROWS), counts(JOIN_ROUTE, "http", "shed")[0]
    try:
        status, _, out, headers = await endpoint(body([1, 2, 3, 4, 5], "fast"), None, None, None)
        assert status == 503 and headers == ((b"retry-after", b"1"),)
        assert json.loads(out)["error"]["details"] == [{"reason": "rows", "retry_after_seconds": 1}]
        assert shed_count("http", ROWS) == before + 1
        assert counts(JOIN_ROUTE, "http", "shed")[0] == outcomes + 1  # an outcome of its own, no error
        (shed_span,) = spans.get_finished_spans()  # (the held join's is not finished)
        assert shed_span.attributes is not None and shed_span.attributes["featurestore.shed"] == "rows"
        assert shed_span.status.status_code is StatusCode.UNSET  # a refusal, not a server fault
        assert (await endpoint(body([1, 2], "fast"), None, None, None))[0] == 200  # 10 rows: within
        assert (await endpoint(body(list(range(101)), "fast"), None, None, None))[0] == 413  # over max_rows
        assert (await endpoint(b"{not json", None, None, None))[0] == 400
        assert (shedder.inflight, shedder.rows.rows) == (1, 8)  # the 200, 413 and 400 gave theirs back
    finally:
        held.cancel()
        with pytest.raises(asyncio.CancelledError):
            await held
    assert (shedder.inflight, shedder.rows.rows) == (0, 0)


@pytest.fixture
async def grpc_join(served: Serve) -> AsyncIterator[tuple[grpc.aio.UnaryUnaryMultiCallable, LoadShedder]]:
    shedder = late_shedder()
    port = await served(make_engine(deadline_seconds=60), shedder=shedder, deadline_ms=60_000)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield channel.unary_unary(JOIN_METHOD), shedder


async def test_a_grpc_join_past_the_row_cap_is_resource_exhausted_with_retry_after(
    grpc_join: tuple[grpc.aio.UnaryUnaryMultiCallable, LoadShedder], spans: InMemorySpanExporter
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
    # (the client may see the status before the handler's finally has ended its span)
    await eventually(spans.get_finished_spans, HANG_GUARD, "the shed call's span to end")
    (shed_span,) = spans.get_finished_spans()
    assert shed_span.attributes is not None and shed_span.attributes["featurestore.shed"] == "rows"
    assert await join(join_message("fast", [1, 2]), timeout=5)  # 10 rows: within
    unknown = pb.JoinRequest(features=["fast:nope"])
    unknown.entities.add(name="user_id").int64_values.values.append(1)
    for bad, code in (
        (b"\xff\xff", grpc.StatusCode.INVALID_ARGUMENT),  # not decoded
        (unknown.SerializeToString(), grpc.StatusCode.NOT_FOUND),  # the engine's error
    ):
        with pytest.raises(grpc.aio.AioRpcError) as failed:
            await join(bad, timeout=5)
        assert failed.value.code() == code
    await eventually(  # the answered and failed calls gave theirs back (their handlers' finally)
        lambda: (shedder.inflight, shedder.rows.rows) == (1, 8),
        HANG_GUARD,
        "the ended calls' admissions back",
    )
    held.cancel()
    await eventually(lambda: shedder.inflight == 0, HANG_GUARD, "the cancelled join to end")
    assert shedder.rows.rows == 0
