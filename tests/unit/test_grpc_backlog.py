"""gRPC calls waiting in grpc core for a worker's event loop: read from channelz (a
private module of grpcio's: these tests fail if it changes), and counted by the load
shedder as joins in flight."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from featurestore.api.grpc_backlog import GrpcBacklog, server_ids
from featurestore.overload import LATENCY, LoadShedder
from tests.unit.test_overload import TARGET, CpuClock, samples

METHOD = "/t.Backlog/Call"


def _server(handler: object) -> tuple[grpc.aio.Server, GrpcBacklog, list[int]]:
    """A grpc.aio server with one method, its backlog, and the count its handlers keep."""
    in_handlers = [0]

    def create() -> grpc.aio.Server:
        server = grpc.aio.server()
        method = (
            grpc.stream_unary_rpc_method_handler(handler) if asyncio.iscoroutinefunction(handler) else handler
        )
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler("t.Backlog", {"Call": method}),)
        )
        return server

    server, backlog = GrpcBacklog.create_server(create, lambda: in_handlers[0])
    assert backlog is not None
    return server, backlog, in_handlers


def test_calls_grpc_core_holds_while_the_loop_is_blocked_read_as_queued_and_none_once_taken_up() -> None:
    seen: list[int] = []

    async def scenario() -> int:
        async def call(requests: object, context: grpc.aio.ServicerContext) -> bytes:
            in_handlers[0] += 1
            try:
                async for _ in requests:  # type: ignore[attr-defined]
                    pass
                seen.append(backlog.queued(on_time=False))
                time.sleep(0.01)  # noqa: ASYNC251 (the loop blocked: the calls after this one wait in core)
                return b""
            finally:
                in_handlers[0] -= 1

        server, backlog, in_handlers = _server(call)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
                stub = ch.stream_unary(METHOD)
                await asyncio.gather(*(stub(iter([b""]), timeout=10) for _ in range(40)))
            return backlog.queued(on_time=False)
        finally:
            await server.stop(None)

    after = asyncio.run(scenario())
    assert len(seen) == 40
    assert max(seen) >= 10  # most of the 40 arrived while the first ones held the loop
    assert after == 0  # every call ended: none waits


def test_a_call_open_outside_the_handlers_counted_is_the_baseline_of_an_on_time_reading() -> None:
    async def scenario() -> tuple[int, int, int]:
        release = asyncio.Event()

        async def call(requests: object, context: grpc.aio.ServicerContext) -> bytes:
            await release.wait()  # a long-lived call (a health Watch's kind), counted by no handler
            return b""

        server, backlog, _ = _server(call)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
                pending = asyncio.ensure_future(ch.stream_unary(METHOD)(iter([b""]), timeout=10))
                await asyncio.sleep(0.2)  # the call in its handler
                late = backlog.queued(on_time=False)  # before any on-time reading: it reads as queued
                on_time = backlog.queued(on_time=True)
                again = backlog.queued(on_time=False)
                release.set()
                await pending
            return late, on_time, again
        finally:
            await server.stop(None)

    assert asyncio.run(scenario()) == (1, 0, 0)


def test_a_channelz_reading_that_fails_is_logged_once_and_reads_no_backlog_after(
    caplog: pytest.LogCaptureFixture,
) -> None:
    backlog = GrpcBacklog(max(server_ids(), default=0) + 10_000, lambda: 0)  # no such server
    with caplog.at_level(logging.ERROR, "featurestore.api.grpc_backlog"):
        assert [backlog.queued(on_time=False) for _ in range(3)] == [0, 0, 0]
    assert len([r for r in caplog.records if "channelz" in r.getMessage()]) == 1


def test_a_server_channelz_does_not_show_as_new_gets_no_backlog(caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> GrpcBacklog | None:
        server = grpc.aio.server()
        _, backlog = GrpcBacklog.create_server(lambda: server, lambda: 0)  # created before: not new
        await server.stop(None)
        return backlog

    with caplog.at_level(logging.WARNING, "featurestore.api.grpc_backlog"):
        assert asyncio.run(scenario()) is None
    assert "sees no gRPC backlog" in caplog.text


class Readings:
    """A backlog the shedder reads: ``late`` calls waiting when the loop was late, 0 when on
    time; what it was told each time."""

    def __init__(self, late: int) -> None:
        self.late = late
        self.told: list[bool] = []

    def __call__(self, on_time: bool) -> int:
        self.told.append(on_time)
        return 0 if on_time else self.late


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


@pytest.mark.parametrize("counted", [True, False])
async def test_the_server_process_wires_its_grpc_servers_queue_to_its_shedder_unless_configured_off(
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
            hidden = listeners.shedder.hidden
            if not counted:
                assert hidden is None
                return
            assert hidden is not None
            backlog = hidden.__self__  # type: ignore[attr-defined]
            assert isinstance(backlog, GrpcBacklog) and backlog.server_id in server_ids()
            await listeners.grpc.start()
            port = rt.config.grpc.port
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
                # a health Watch: a call that stays open, in no handler of ours
                watch = health_pb2_grpc.HealthStub(ch).Watch(health_pb2.HealthCheckRequest(service=""))
                await watch.read()
                assert hidden(False) == 1  # read from this very server's counts
                assert hidden(True) == 0 and hidden(False) == 0  # on time: the baseline
                watch.cancel()
        finally:
            listeners.sock.close()
            await listeners.grpc.stop(None)
            listeners.guard.close()
    finally:
        await rt.close()
