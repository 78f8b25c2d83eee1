"""benchmarks.open_loop over gRPC, and what benchmarks.overload reports from it: every
scheduled call is counted once, under the outcome the server gave it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import pytest

from benchmarks.grpc_load import METHOD
from benchmarks.open_loop import EXPIRED, PARTIAL, Grpc, _open_loop, _summary
from benchmarks.overload import outcomes_in, result_file


def _part(answered: list[float], counts: dict[str, int]) -> dict[str, object]:
    return {"answered": answered, "served": answered, "waits": [0.0] * sum(counts.values()),
            "late": [0.0], "held": 0.0, "counts": counts, "cpu": 1.0}  # fmt: skip


def test_a_phase_counts_answered_and_shed_calls_by_the_transports_own_outcomes() -> None:
    parts = [
        _part([0.010, 0.020], {"OK": 2, "RESOURCE_EXHAUSTED": 3}),
        _part([0.030], {"OK": 1, "DEADLINE_EXCEEDED": 4}),
    ]
    out = _summary(parts, 100.0, [], "OK", "RESOURCE_EXHAUSTED")
    assert (out["answered"], out["shed"], out["other"]) == (3, 3, {"DEADLINE_EXCEEDED": 4})
    assert out["p50_ms"] == 20.0 and out["limit_median"] is None


def test_each_run_of_the_overload_benchmark_writes_its_own_results_file() -> None:
    assert result_file("http", 100) == "overload.md"
    assert result_file("http", 1000) == "overload-b1000.md"
    assert result_file("grpc", 100) == "overload-grpc.md"
    assert result_file("grpc", 100, deadline=True) == "overload-grpc-deadline.md"


async def _grpc_open_loop(
    join: Callable[[bytes, grpc.aio.ServicerContext], Awaitable[bytes]],
    phases: tuple[tuple[float, float], ...],
    slots: int,
) -> list[dict[str, Any]]:
    """One load process's schedule of gRPC calls (0.5 s deadlines) against a real grpc.aio
    server whose Join is ``join``."""
    server = grpc.aio.server()
    service, method = METHOD.strip("/").split("/")
    handler = grpc.unary_unary_rpc_method_handler(join)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, {method: handler}),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        return await _open_loop("grpc", 0.5, port, 1, phases, slots, 1, time.time() + 2.0)
    finally:
        await server.stop(None)


def test_an_open_loop_of_grpc_calls_counts_each_once_and_sends_the_calls_deadline() -> None:
    left: list[float] = []

    async def join(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        remaining = context.time_remaining()
        assert remaining is not None
        left.append(remaining)
        if len(left) % 2:  # every other call shed, as an overloaded server's
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "overloaded")
        return b""

    # 40 calls at 200 a second, then 10 at 100, on 4 slots, each with a 0.5 s deadline
    first, second = asyncio.run(_grpc_open_loop(join, ((200.0, 0.2), (100.0, 0.1)), 4))
    assert len(left) == 40 + 10
    # the client deadline, as the server sees it (grpc-timeout rounds up: 0.50003 s seen)
    assert all(0 < x <= 0.501 for x in left), left
    assert sum(first["counts"].values()) == 40 and sum(second["counts"].values()) == 10
    total = {k: first["counts"].get(k, 0) + second["counts"].get(k, 0) for k in ("OK", "RESOURCE_EXHAUSTED")}
    assert total == {"OK": 25, "RESOURCE_EXHAUSTED": 25}
    assert len(first["answered"]) + len(second["answered"]) == 25


def test_an_http_open_loop_refuses_a_client_deadline_it_cannot_send() -> None:
    with pytest.raises(ValueError, match="gRPC option"):
        asyncio.run(_open_loop("http", 0.5, 1, 1, ((1.0, 1.0),), 1, 1, time.time() + 1))


def test_a_grpc_call_whose_callers_deadline_passed_while_it_waited_for_a_slot_is_not_sent() -> None:
    link = Grpc(1, 1, 7, deadline=0.5)  # no channel opened: a call sent would fail on it
    late = time.perf_counter() - 0.6  # scheduled 0.6 s ago: its 0.5 s are gone
    assert asyncio.run(link.call(3, 0, late)) == (EXPIRED, 3)


def _http_open_loop(answer: Callable[[int], bytes]) -> dict[str, Any]:
    """An open loop (200/s for 0.2 s, 4 connections) against a local HTTP server whose n-th
    answer (from 1) is ``answer(n)``, a whole response; the phase's record."""

    served = 0

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal served
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, ConnectionError):  # the load process closed it
                return
            length = int(
                next(x for x in head.split(b"\r\n") if x.lower().startswith(b"content-length:"))[15:]
            )
            await reader.readexactly(length)
            served += 1
            writer.write(answer(served))

    async def scenario() -> list[dict[str, Any]]:
        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            return await _open_loop("http", None, port, 1, ((200.0, 0.2),), 4, 1, time.time() + 2.0)
        finally:
            server.close()

    [phase] = asyncio.run(scenario())
    return phase


def test_an_open_loop_of_http_requests_counts_each_once_by_its_status() -> None:
    def answer(n: int) -> bytes:
        status = b"200 OK" if n % 2 else b"503 Service Unavailable"  # every other one shed
        return b"HTTP/1.1 %s\r\ncontent-length: 2\r\n\r\n{}" % status

    phase = _http_open_loop(answer)
    assert phase["counts"] == {"200": 20, "503": 20} and len(phase["answered"]) == 20


def test_a_grpc_calls_deadline_runs_from_its_schedule_so_waiting_for_a_slot_uses_it_up() -> None:
    left: list[float] = []

    async def join(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        remaining = context.time_remaining()
        assert remaining is not None
        left.append(remaining)
        await asyncio.sleep(0.1)  # each call holds the one slot 100 ms
        return b""

    # three calls scheduled 1 ms apart, one slot, 0.5 s deadlines
    asyncio.run(_grpc_open_loop(join, ((1000.0, 0.003),), 1))
    assert len(left) == 3
    # Each waited ~100 ms more for the slot than the one before, so had ~100 ms less left
    # (from the send, each would have ~0.5 s). Compared call to call: the first call's own
    # start lost 36 ms of its deadline in 4 of 5 runs on a quiet machine, past a fixed 50 ms
    # tolerance by the third call.
    assert all(0 < x <= 0.501 for x in left), left
    assert all(0.07 < left[k] - left[k + 1] < 0.2 for k in range(2)), left  # (a loaded loop hands over later)


def test_a_partial_answer_counts_as_answered_at_its_latency_and_is_counted_apart() -> None:
    parts = [_part([0.010, 0.480], {"200": 1, PARTIAL: 1, "503": 2})]
    out = _summary(parts, 100.0, [], "200", "503")
    assert (out["answered"], out["partial"], out["shed"], out["other"]) == (2, 1, 2, {})
    assert out["p99_ms"] == 480.0  # the partial answer's latency (at the deadline) is in it


def test_an_http_open_loop_tells_a_partial_answer_by_its_metadata() -> None:
    def answer(n: int) -> bytes:
        body = b'{"metadata":{"partial":%s}}' % (b"true" if n % 2 else b"false")
        return b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)

    phase = _http_open_loop(answer)
    assert phase["counts"] == {"200": 20, PARTIAL: 20} and len(phase["answered"]) == 40


def test_the_join_outcomes_are_read_from_both_protocols_join_routes_only() -> None:
    text = (
        'featurestore_requests_total{outcome="ok",protocol="http",route="/v1/feature/join"} 10.0\n'
        'featurestore_requests_total{outcome="partial",protocol="http",route="/v1/feature/join"} 4.0\n'
        'featurestore_requests_total{outcome="ok",protocol="grpc",route="/featurestore.v1.FeatureService/Join"} 3.0\n'
        'featurestore_requests_total{outcome="ok",protocol="http",route="/v1/feature/push"} 99.0\n'
    )
    assert outcomes_in(text) == {"ok": 13.0, "partial": 4.0}
