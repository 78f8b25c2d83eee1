"""Fixtures shared by the unit tests of the APIs: a gRPC server, spans recorded in memory."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Protocol

import grpc
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_ON

from featurestore import tracing
from featurestore.api.grpc import JOIN_METHOD, GrpcApi, create_server
from featurestore.api.grpc_intake import Intake
from featurestore.config import GrpcConfig
from featurestore.join import JoinEngine
from featurestore.overload import LoadShedder
from featurestore.push import PushService


class Serve(Protocol):
    async def __call__(
        self,
        engine: JoinEngine,
        *,
        unary_join: bool = False,
        push: PushService | None = None,
        shedder: LoadShedder | None = None,
        deadline_ms: int = 500,
    ) -> int: ...


@pytest.fixture
async def served() -> AsyncIterator[Serve]:
    """Starts a grpc.aio server for an engine (and its push service, ``PushService(engine)``
    unless given; a load shedder if given) on a free port, with the call intake the server
    runs; its port. Stopped after the test."""
    servers: list[grpc.aio.Server] = []
    intakes: list[Intake] = []

    async def serve(
        engine: JoinEngine,
        *,
        unary_join: bool = False,
        push: PushService | None = None,
        shedder: LoadShedder | None = None,
        deadline_ms: int = 500,
    ) -> int:
        api = GrpcApi(
            engine,
            push or PushService(engine),
            deadline_ms=deadline_ms,
            unary_join=unary_join,
            shedder=shedder,
        )
        server = create_server(1 << 20, GrpcConfig(), reuse_port=False)
        api.register(server)
        port: int = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        servers.append(server)
        intakes.append(Intake(server, JOIN_METHOD, api.handler("Join"), GrpcConfig().intake_loops))
        return port

    yield serve
    for server in servers:
        await server.stop(0)
    for intake in intakes:
        await intake.close()


@pytest.fixture
def spans(monkeypatch: pytest.MonkeyPatch) -> Iterator[InMemorySpanExporter]:
    """Record every span in memory, as an exporter would see them."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=ALWAYS_ON)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(tracing, "tracer", provider.get_tracer("test"))
    monkeypatch.setattr(tracing, "_exporting", True)
    yield exporter
    provider.shutdown()
