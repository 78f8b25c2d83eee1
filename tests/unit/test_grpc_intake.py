"""The gRPC call intake (api/grpc_intake.py): Join take-ups outstanding besides grpc.aio's
one, through grpc's own internals. A real grpc.aio server in-process and a real client."""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Protocol

import grpc
import pytest
from grpc._cython import cygrpc
from prometheus_client import REGISTRY

from featurestore import metrics
from featurestore.api import grpc_intake
from featurestore.api.grpc import JOIN_METHOD, GrpcApi, create_server
from featurestore.api.grpc_intake import Intake, missing_internals
from featurestore.config import GrpcConfig, load_config
from featurestore.errors import InvalidArgument
from featurestore.join import JoinEngine, JoinRequest, JoinResult
from featurestore.push import PushService
from featurestore.v1 import featurestore_pb2 as pb
from tests.support import eventually, one_view_listener_config
from tests.unit.test_api_edges import HANG_GUARD, join_message, make_engine

CALLS = 64


class Served:
    def __init__(self, server: grpc.aio.Server, intake: Intake, port: int) -> None:
        self.server, self.intake, self.port = server, intake, port


class Serve(Protocol):
    async def __call__(self, engine: JoinEngine, loops: int) -> Served: ...


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    started: list[Served] = []

    async def start(engine: JoinEngine, loops: int) -> Served:
        api = GrpcApi(engine, PushService(engine), deadline_ms=500)
        server = create_server(1 << 20, GrpcConfig(), reuse_port=False)
        api.register(server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        s = Served(server, Intake(server, JOIN_METHOD, api.handler("Join"), loops), port)
        started.append(s)
        return s

    yield start
    for s in started:
        await s.server.stop(0)
        await s.intake.close()


async def join_all(port: int, calls: int = CALLS) -> list[pb.JoinResponse]:
    """``calls`` joins at once (user i for call i); their answers, trace ids blanked."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        join = channel.unary_unary(JOIN_METHOD)
        raw = await asyncio.gather(
            *(join(join_message("fast", [i]), timeout=HANG_GUARD) for i in range(calls))
        )
    answers = [pb.JoinResponse.FromString(r) for r in raw]
    for a in answers:
        a.metadata.trace_id = ""
    return answers


def loops_gauge() -> float | None:
    return REGISTRY.get_sample_value("featurestore_grpc_intake_loops")


def missing_gauge() -> float | None:
    return REGISTRY.get_sample_value("featurestore_grpc_intake_internals_missing")


async def test_the_grpc_internals_the_intake_calls_are_there_with_the_parameters_it_passes() -> None:
    # Fails on a grpc upgrade that renames or reshapes them: the intake would then
    # fall back to grpc's one take-up at a time (and say so), losing its throughput.
    server = grpc.aio.server()
    try:
        assert missing_internals(server) is None
    finally:
        await server.stop(None)


async def test_the_server_gets_no_interceptors_or_rpc_limit_the_intake_would_skip(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The intake's take-ups go past grpc's server interceptors and maximum_concurrent_rpcs
    # (it cannot read them): a server given either would apply it to a few calls in 17.
    seen: dict[str, object] = {}

    def recording_server(*args: object, **kwargs: object) -> grpc.aio.Server:
        seen.update(kwargs, args=args)
        return original(*args, **kwargs)

    original = grpc.aio.server
    monkeypatch.setattr(grpc.aio, "server", recording_server)
    await create_server(1 << 20, GrpcConfig(), reuse_port=False).stop(None)
    assert seen["args"] == ()
    assert set(seen) == {"args", "options"}, "grpc_intake.py would skip these for most Join calls"


async def test_joins_taken_up_by_the_intake_are_answered_as_those_grpc_takes_up(serve: Serve) -> None:
    engine = make_engine()
    with_intake, without = await serve(engine, 4), await serve(engine, 0)
    answers = await join_all(with_intake.port)
    assert with_intake.intake.taken > 0  # (grpc's own loop takes up the rest)
    assert answers == await join_all(without.port)
    assert [list(r.results[0].int64_values.values) for r in answers] == [[i] for i in range(CALLS)]


async def test_most_calls_arriving_together_are_taken_up_by_the_intake(serve: Serve) -> None:
    # 16 take-ups outstanding against grpc's one: most of 64 calls sent at once come in
    # through the intake's loops.
    s = await serve(make_engine(), 16)
    await join_all(s.port)
    assert s.intake.taken > CALLS // 2


async def test_stopping_the_server_ends_the_intake_s_loops_without_an_error(
    serve: Serve, caplog: pytest.LogCaptureFixture
) -> None:
    s = await serve(make_engine(), 4)
    assert loops_gauge() == 4
    await join_all(s.port, 8)
    with caplog.at_level(logging.WARNING, logger=grpc_intake.__name__):
        await s.server.stop(0)
        await s.intake.close()
    assert not caplog.records
    assert loops_gauge() == 4  # a worker stopping is not one whose intake broke


class SlowEngine(JoinEngine):
    """Joins that wait until ``go`` is set; counts those started and finished."""

    def __init__(self, base: JoinEngine) -> None:
        super().__init__(base.stores, base.state, base.limits)
        self.started = self.finished = 0
        self.go = asyncio.Event()

    async def join(self, req: JoinRequest, deadline: float, span: Any = None) -> JoinResult:
        self.started += 1
        await self.go.wait()
        result = await super().join(req, deadline, span)
        self.finished += 1
        return result


def answered() -> float:
    """gRPC joins answered, in full or in part (the fast view is not loaded: partial)."""
    metrics.flush()
    labels = {"route": JOIN_METHOD, "protocol": "grpc"}
    samples = (
        REGISTRY.get_sample_value("featurestore_requests_total", {**labels, "outcome": outcome})
        for outcome in ("ok", "partial")
    )
    return sum(s or 0.0 for s in samples)


async def test_calls_the_intake_took_up_are_answered_within_the_stop_s_grace(serve: Serve) -> None:
    engine = SlowEngine(make_engine())
    s = await serve(engine, 16)
    before = answered()
    answers = asyncio.gather(*(join_one(s.port, i) for i in range(32)), return_exceptions=True)
    # every call taken up (by the intake or grpc's loop: core ends those not yet taken up
    # when a stop begins) and in its join
    await eventually(lambda: engine.started == 32, HANG_GUARD, "32 joins started")
    assert s.intake.taken > 0
    stopping = asyncio.ensure_future(s.server.stop(HANG_GUARD))  # (its grace)
    await asyncio.sleep(0.05)
    assert engine.finished == 0  # every call still in its join when the stop began
    engine.go.set()
    await stopping
    await s.intake.close()
    # every call ran its join to the end and was answered: none cancelled by the stop
    assert engine.finished == 32
    assert answered() - before == 32
    # and reached its caller, but for core's close race: grpc core closes a connection as
    # its last call ends, and a client's frame it has not read then turns the close into a
    # reset that can lose answers still in flight (UNAVAILABLE, "Stream removed"; 2 of 800
    # stops beside two busy processes, as often without the intake; the client retries it)
    results = await answers
    for i, result in enumerate(results):
        if isinstance(result, grpc.aio.AioRpcError):
            assert result.code() == grpc.StatusCode.UNAVAILABLE, result
            assert "Stream removed" in (result.details() or ""), result
        else:
            assert result == [i]
    assert sum(not isinstance(r, grpc.aio.AioRpcError) for r in results) >= 16


async def join_one(port: int, user: int) -> list[int]:
    """One join on a channel of its own (a close race loses one call's answer, not all)."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        raw = await channel.unary_unary(JOIN_METHOD)(join_message("fast", [user]), timeout=HANG_GUARD)
    return list(pb.JoinResponse.FromString(raw).results[0].int64_values.values)


async def test_a_take_up_loop_that_fails_while_the_server_runs_is_logged_and_counted_down(
    serve: Serve, caplog: pytest.LogCaptureFixture
) -> None:
    # A method core does not know fails each loop's first take-up before core is asked
    engine = make_engine()
    api = GrpcApi(engine, PushService(engine), deadline_ms=500)
    s = await serve(engine, 0)
    with caplog.at_level(logging.ERROR, logger=grpc_intake.__name__):
        intake = Intake(s.server, "/featurestore.v1.FeatureService/Nope", api.handler("Join"), 3)
        await eventually(lambda: loops_gauge() == 0, HANG_GUARD, "the failed loops counted down")
    assert caplog.text.count("a gRPC call intake loop failed") == 3
    assert len(await join_all(s.port, 8)) == 8  # grpc's own loop takes Join up
    await s.server.stop(0)
    await intake.close()


async def test_an_intake_starts_on_a_running_server_and_closes_after_its_stop() -> None:
    # Either the other way round would crash the process in grpc core (grpc_intake.py).
    engine = make_engine()
    api = GrpcApi(engine, PushService(engine), deadline_ms=500)
    server = create_server(1 << 20, GrpcConfig(), reuse_port=False)
    api.register(server)
    server.add_insecure_port("127.0.0.1:0")
    with pytest.raises(RuntimeError, match="after its server"):
        Intake(server, JOIN_METHOD, api.handler("Join"), 4)
    await server.start()
    intake: Intake | None = None
    try:
        intake = Intake(server, JOIN_METHOD, api.handler("Join"), 4)
        with pytest.raises(RuntimeError, match="after its server's stop"):
            await intake.close()
    finally:
        await server.stop(0)
    assert intake is not None
    await intake.close()


@pytest.mark.parametrize(
    ("owner", "name"),
    [
        ("cygrpc", "_schedule_rpc_coro"),
        ("cygrpc", "_handle_rpc"),
        ("cygrpc", "_MethodResolver"),
        ("server", "_request_registered_call"),
        ("server", "is_running"),
    ],
)
async def test_an_intake_without_a_grpc_internal_it_needs_leaves_take_ups_to_grpc(
    serve: Serve,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
    owner: str,
    name: str,
) -> None:
    # grpc's own loop uses them too, so each is replaced by a stand-in that still works for
    # grpc but is not what the intake checks for: a new parameter, or (the class) a wrapper
    if owner == "cygrpc" and name != "_MethodResolver":
        original = getattr(cygrpc, name)

        def reshaped(*args: Any, priority: int = 0) -> Any:
            return original(*args)

        monkeypatch.setattr(cygrpc, name, reshaped)
    elif owner == "cygrpc":
        monkeypatch.setattr(cygrpc, name, lambda *args: None)  # a function, not the class
    else:
        # the AioServer is a Cython class: seen through a proxy that lacks the method
        real_start = create_server

        def proxied(*args: Any, **kwargs: Any) -> grpc.aio.Server:
            server = real_start(*args, **kwargs)
            aio = server._server

            class Hidden:
                def __getattr__(self, attr: str) -> Any:
                    if attr == name:
                        raise AttributeError(attr)
                    return getattr(aio, attr)

            monkeypatch.setattr(server, "_server", Hidden())
            return server

        monkeypatch.setattr(sys.modules[__name__], "create_server", proxied)
    with caplog.at_level(logging.WARNING, logger=grpc_intake.__name__):
        s = await serve(make_engine(), 4)
    assert name in caplog.text
    assert loops_gauge() == 0
    assert missing_gauge() == 1  # (a configured 0 reads 0 here: the next test)
    assert s.intake.taken == 0
    if owner == "cygrpc":
        assert len(await join_all(s.port, 8)) == 8  # answered all the same, by grpc's own loop


@pytest.mark.parametrize("loops", [0, 4])
async def test_an_intake_with_grpc_s_internals_reads_none_missing_whether_configured_off_or_on(
    serve: Serve, loops: int
) -> None:
    s = await serve(make_engine(), loops)
    assert loops_gauge() == loops
    assert missing_gauge() == 0
    assert len(await join_all(s.port, 8)) == 8


@pytest.mark.parametrize(("value", "named"), [("1025", "at most 1024"), ("-1", "0 or a positive")])
def test_intake_loops_beyond_its_bounds_is_a_configuration_error_naming_it(
    monkeypatch: pytest.MonkeyPatch, value: str, named: str
) -> None:
    monkeypatch.setenv("FEATURESTORE_GRPC__INTAKE_LOOPS", value)
    with pytest.raises(InvalidArgument, match=rf"grpc\.intake_loops.*{named}"):
        load_config()
    monkeypatch.setenv("FEATURESTORE_GRPC__INTAKE_LOOPS", "1024")
    assert load_config().grpc.intake_loops == 1024


async def test_listeners_that_fail_to_start_stop_grpc_before_the_intake_closes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A take-up left outstanding on a running server when the process ends is the crash
    # grpc_intake.py guards against: a failing HTTP listener must end them first.
    from featurestore import process
    from featurestore.runtime import build_runtime

    config = await one_view_listener_config(tmp_path)

    async def failing(*args: Any) -> None:
        raise OSError("the HTTP listener cannot start")

    monkeypatch.setattr(process, "start_uvicorn", failing)
    rt = await build_runtime(config)
    try:
        listeners = process.Listeners(rt)
        try:
            with pytest.raises(OSError, match="cannot start"):
                await listeners.start()
            assert listeners.intakes and listeners.intakes[0].taken == 0
            assert not listeners.grpc._server.is_running()  # stopped ...
            assert all(t.done() for i in listeners.intakes for t in i._loops)  # ... and the take-ups ended
        finally:
            listeners.sock.close()
            listeners.guard.close()
    finally:
        await rt.close()
