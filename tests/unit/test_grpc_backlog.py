"""gRPC calls waiting in grpc core for a worker's event loop: channelz's count of calls
started (a private module of grpcio's: these tests fail if it changes) less the calls grpc
handed to Python, counted by the load shedder as joins in flight."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from featurestore.api.grpc_backlog import GrpcBacklog, TakeUps, server_ids
from featurestore.overload import INFLIGHT, LATENCY, LoadShedder
from tests.unit.test_overload import TARGET, CpuClock, samples

METHOD = "/t.Backlog/Call"
Handler = Callable[[Any, grpc.aio.ServicerContext], Any]


def _server(handler: Handler, **options: int) -> tuple[grpc.aio.Server, GrpcBacklog]:
    """A grpc.aio server with one method (client-streaming, as Join's) and its backlog."""

    def create(take_ups: TakeUps) -> grpc.aio.Server:
        server = grpc.aio.server(interceptors=(take_ups,), options=list(options.items()))
        method = grpc.stream_unary_rpc_method_handler(handler)
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler("t.Backlog", {"Call": method}),)
        )
        return server

    server, backlog = GrpcBacklog.create_server(create, lambda: None)
    assert backlog is not None
    return server, backlog


async def _calls(port: int, n: int, method: str = METHOD) -> list[Any]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        stub = ch.stream_unary(method)
        return await asyncio.gather(
            *(stub(iter([b""]), timeout=10) for _ in range(n)), return_exceptions=True
        )


def _blocking(seen: list[int], backlog: list[GrpcBacklog]) -> Handler:
    """A handler that reads the queue (the loop late: it is blocked), then blocks the loop
    for 10 ms: the calls after it wait in core."""

    async def call(requests: Any, context: grpc.aio.ServicerContext) -> bytes:
        async for _ in requests:
            pass
        seen.append(backlog[0].queued(on_time=False))
        time.sleep(0.01)  # noqa: ASYNC251 (the point: a loop too busy to take calls up)
        return b""

    return call


def test_calls_grpc_core_holds_while_the_loop_is_blocked_read_as_queued_and_none_once_taken_up() -> None:
    seen: list[int] = []
    holder: list[GrpcBacklog] = []

    async def scenario() -> int:
        server, backlog = _server(_blocking(seen, holder))
        holder.append(backlog)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            assert all(isinstance(r, bytes) for r in await _calls(port, 40))
            return backlog.queued(on_time=False)
        finally:
            await server.stop(None)

    after = asyncio.run(scenario())
    assert len(seen) == 40
    assert max(seen) >= 10  # most of the 40 arrived while the first ones held the loop
    assert after == 0  # every call was taken up: none waits


def test_calls_core_ends_without_handing_them_over_are_no_queue_once_an_on_time_interval_takes_none() -> None:
    seen: list[int] = []
    holder: list[GrpcBacklog] = []

    async def scenario() -> tuple[int, int, int, int]:
        # core's pending bound at 2 (all past 4; the server process lifts it: PENDING_OPTIONS):
        # of calls arriving while the loop is blocked, it ends most, never handing them over
        server, backlog = _server(
            _blocking(seen, holder),
            **{"grpc.server.max_pending_requests": 2, "grpc.server.max_pending_requests_hard_limit": 4},
        )
        holder.append(backlog)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            results = await _calls(port, 40)
            dropped = sum(1 for r in results if not isinstance(r, bytes))
            counted = backlog.queued(on_time=False)  # calls were taken up since the last reading
            quiet = backlog.queued(on_time=True)  # none since, the loop free: none waits
            return dropped, counted, quiet, backlog.queued(on_time=False)
        finally:
            await server.stop(None)

    dropped, counted, quiet, after = asyncio.run(scenario())
    assert dropped >= 10 and counted == dropped  # started, never taken up: read as waiting
    assert (quiet, after) == (0, 0)


def _counted(*readings: tuple[int, int, bool]) -> list[int]:
    """What a backlog reads from (calls started, calls taken up, loop on time) in turn."""
    backlog = GrpcBacklog(0, TakeUps(lambda: None))
    return [backlog.count(*r) for r in readings]


def test_a_queue_that_grows_while_the_loop_keeps_time_is_counted() -> None:
    # take-ups go on (the loop on time), but fewer than arrive: the queue is real
    assert _counted((100, 20, True), (200, 60, True), (300, 100, True)) == [80, 140, 200]


def test_an_interval_on_time_with_no_call_taken_up_has_none_waiting() -> None:
    assert _counted((100, 50, False), (100, 50, True), (105, 52, False)) == [50, 0, 3]


def test_a_late_interval_with_no_call_taken_up_keeps_the_count() -> None:
    assert _counted((100, 50, False), (100, 50, False)) == [50, 50]  # a loop too busy to take any up


def test_a_call_open_for_long_in_a_handler_is_taken_up_not_queued() -> None:
    async def scenario() -> tuple[int, int]:
        release = asyncio.Event()

        async def call(requests: Any, context: grpc.aio.ServicerContext) -> bytes:
            await release.wait()  # a long-lived call, as a health Watch
            return b""

        server, backlog = _server(call)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
                pending = asyncio.ensure_future(ch.stream_unary(METHOD)(iter([b""]), timeout=10))
                await asyncio.sleep(0.2)  # the call in its handler
                readings = backlog.queued(on_time=False), backlog.queued(on_time=True)
                release.set()
                await pending
            return readings
        finally:
            await server.stop(None)

    assert asyncio.run(scenario()) == (0, 0)


def test_a_channelz_reading_that_fails_is_logged_once_and_reads_no_queue_after(
    caplog: pytest.LogCaptureFixture,
) -> None:
    backlog = GrpcBacklog(max(server_ids(), default=0) + 10_000, TakeUps(lambda: None))  # no such server
    with caplog.at_level(logging.WARNING, "featurestore.api.grpc_backlog"):
        assert [backlog.queued(on_time=False) for _ in range(3)] == [0, 0, 0]
    assert len([r for r in caplog.records if "channelz" in r.getMessage()]) == 1


def test_a_closed_backlog_reads_no_queue_and_logs_nothing(caplog: pytest.LogCaptureFixture) -> None:
    backlog = GrpcBacklog(max(server_ids(), default=0) + 10_000, TakeUps(lambda: None))
    backlog.close()
    with caplog.at_level(logging.DEBUG, "featurestore.api.grpc_backlog"):
        assert backlog.queued(on_time=False) == 0
    assert not caplog.records


def test_a_server_that_does_not_show_in_channelz_as_new_gets_no_backlog(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def scenario() -> GrpcBacklog | None:
        server = grpc.aio.server()
        _, backlog = GrpcBacklog.create_server(lambda take_ups: server, lambda: None)  # created before
        await server.stop(None)
        return backlog

    with caplog.at_level(logging.WARNING, "featurestore.api.grpc_backlog"):
        assert asyncio.run(scenario()) is None
    assert "sees no gRPC queue" in caplog.text


def test_the_interceptor_counts_every_call_grpc_hands_to_python_and_tells_the_shedder() -> None:
    told: list[int] = []

    async def scenario() -> int:
        async def call(requests: Any, context: grpc.aio.ServicerContext) -> bytes:
            return b""

        def create(take_ups: TakeUps) -> grpc.aio.Server:
            server = grpc.aio.server(interceptors=(take_ups,))
            handler = grpc.stream_unary_rpc_method_handler(call)
            server.add_generic_rpc_handlers(
                (grpc.method_handlers_generic_handler("t.Backlog", {"Call": handler}),)
            )
            from grpc_health.v1 import health

            health_pb2_grpc.add_HealthServicer_to_server(
                health.aio.HealthServicer(), server
            )  # registered: no generic lookup
            return server

        server, backlog = GrpcBacklog.create_server(create, lambda: told.append(1))
        assert backlog is not None
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            await _calls(port, 2)
            await _calls(port, 1, "/t.Backlog/Unknown")
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
                await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=""))
            return backlog.take_ups.taken
        finally:
            await server.stop(None)

    assert asyncio.run(scenario()) == 4 and len(told) == 4


class Readings:
    """A backlog the shedder reads: ``count`` calls waiting; what it was told each time."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.told: list[bool] = []

    def __call__(self, on_time: bool) -> int:
        self.told.append(on_time)
        return self.count


def test_a_late_loop_with_few_joins_started_and_hundreds_waiting_in_grpc_core_is_cut() -> None:
    s = LoadShedder(1024, TARGET, cpu_clock=CpuClock())
    assert [s.admit() for _ in range(10)] == [None] * 10  # 10 joins started: under the floor of 64
    s.hidden = Readings(300)
    at = samples(s, [0.05] * 11)  # the first late interval's end reads the 300 waiting
    assert s.queued == 300 and s.limit == 1024
    at = samples(s, [0.05] * 10, start=at)  # 310 in flight at every sample of the next two
    samples(s, [0.05] * 10, start=at)
    assert s.limit == pytest.approx(310 * 0.25)  # cut to a quarter at most (5 / 50 ms is less)
    assert s.admit() == LATENCY  # 10 + 300 >= 77.5: the calls grpc hands over are shed


def test_each_call_taken_up_leaves_the_queue_and_calls_are_admitted_once_it_is_under_the_limit() -> None:
    s = LoadShedder(1024, TARGET, cpu_clock=CpuClock())
    s.limit, s.queued = 64.0, 100
    told: list[str | None] = []
    for _ in range(40):  # what the gRPC handlers do with each call: taken up, then admitted or not
        s.taken_up()
        told.append(s.admit())
    assert told == [LATENCY] * 36 + [None] * 4  # shed while 99..64 wait, then 0 + 63 < 64
    assert (s.inflight, s.queued) == (4, 60)


def test_a_reading_says_whether_the_loop_ran_on_time_over_the_interval() -> None:
    s = LoadShedder(1024, TARGET, cpu_clock=CpuClock())
    s.hidden = readings = Readings(5)
    at = samples(s, [0.0] * 11)
    samples(s, [0.05] * 10, start=at)
    assert readings.told == [True, False] and s.queued == 5


def test_no_call_taken_up_from_an_empty_queue_counts_below_zero() -> None:
    s = LoadShedder(1024, TARGET, cpu_clock=CpuClock())
    s.taken_up()
    assert s.queued == 0


def test_a_call_refused_for_the_queue_while_the_limit_is_at_the_cap_is_refused_by_the_cap() -> None:
    s = LoadShedder(16, TARGET, cpu_clock=CpuClock())
    s.queued = 16
    assert s.admit() == INFLIGHT  # the cap counts the calls waiting: never cut, so not "latency"


def test_a_shedder_that_stops_watching_counts_no_queue() -> None:
    async def scenario() -> LoadShedder:
        s = LoadShedder(1024, TARGET, cpu_clock=CpuClock())
        s.queued = 50
        task = asyncio.ensure_future(s.watch())
        await asyncio.sleep(0.02)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return s

    assert asyncio.run(scenario()).queued == 0


@pytest.mark.parametrize("counted", [True, False])
async def test_the_server_process_counts_its_grpc_servers_queue_for_its_shedder_unless_configured_off(
    tmp_path: Path, counted: bool
) -> None:
    from featurestore.config import load_config
    from featurestore.model import DType, Entity, Feature, FeatureView, make_definitions
    from featurestore.process import Listeners
    from featurestore.registry.admin import RegistryAdmin
    from featurestore.registry.file import FileRegistry
    from featurestore.runtime import build_runtime
    from tests.harness import free_port

    user = Entity("user_id", DType.INT64)
    view = FeatureView("v", (user,), (Feature("f", DType.FLOAT64),))
    await RegistryAdmin(FileRegistry(tmp_path / "reg", "p")).apply(make_definitions("p", [user], [view], []))
    config = load_config(
        None,
        {
            ("project",): "p",
            ("registry", "path"): str(tmp_path / "reg"),
            ("derived", "cache_dir"): str(tmp_path / "cache"),
            ("http", "port"): free_port(),
            ("grpc", "port"): free_port(),
            ("limits", "shed_grpc_queue"): counted,
        },
    )
    rt = await build_runtime(config)
    try:
        listeners = Listeners(rt)
        try:
            if not counted:
                assert listeners.shedder.hidden is None and listeners.backlog is None
                return
            backlog = listeners.backlog
            assert backlog is not None and listeners.shedder.hidden == backlog.queued
            assert backlog.server_id in server_ids()
            await listeners.grpc.start()
            async with grpc.aio.insecure_channel(f"127.0.0.1:{rt.config.grpc.port}") as ch:
                health = health_pb2_grpc.HealthStub(ch)
                watch = health.Watch(health_pb2.HealthCheckRequest(service=""))  # stays open
                await watch.read()
                await health.Check(health_pb2.HealthCheckRequest(service=""))
                assert backlog.take_ups.taken == 2  # this very server's calls, taken up
                assert backlog.queued(on_time=False) == 0
                watch.cancel()
        finally:
            listeners.sock.close()
            await listeners.grpc.stop(None)
            listeners.guard.close()
    finally:
        await rt.close()
