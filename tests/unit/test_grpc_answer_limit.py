"""A gRPC answer over what grpc may send is refused by the handler, named and counted as
such, instead of failing in grpc core after the call was counted ok."""

from __future__ import annotations

import grpc
import pytest

from featurestore.api import grpc as grpc_api
from featurestore.api.grpc import JOIN_METHOD, GrpcApi
from featurestore.config import GrpcConfig
from featurestore.push import PushService
from tests.unit.test_api_edges import FakeContext, counts, join_message, make_engine


async def test_an_answer_over_the_send_limit_is_resource_exhausted_naming_its_size(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    engine = make_engine()
    api = GrpcApi(engine, PushService(engine), deadline_ms=500)
    small = FakeContext()
    await api.join(join_message("fast", [1]), small)  # (an answer of a few dozen bytes)
    monkeypatch.setattr(grpc_api, "MAX_ANSWER_BYTES", 40)
    before = counts(JOIN_METHOD, "grpc", "RESOURCE_EXHAUSTED")
    ctx = FakeContext()
    with pytest.raises(grpc.aio.AbortError):
        await api.join(join_message("fast", list(range(50))), ctx)
    assert ctx.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "bytes, over the 40 a gRPC answer may hold" in ctx.details and "fewer rows" in ctx.details
    assert counts(JOIN_METHOD, "grpc", "RESOURCE_EXHAUSTED")[0] == before[0] + 1


async def test_the_server_sends_at_most_what_the_handler_checks(monkeypatch: pytest.MonkeyPatch) -> None:
    recorded: list[tuple[str, object]] = []

    def recording_server(*, options: list[tuple[str, object]]) -> grpc.aio.Server:
        recorded.extend(options)
        return original(options=options)

    original = grpc.aio.server
    monkeypatch.setattr(grpc.aio, "server", recording_server)
    await grpc_api.create_server(1 << 20, GrpcConfig(), reuse_port=False).stop(None)
    assert ("grpc.max_send_message_length", grpc_api.MAX_ANSWER_BYTES) in recorded
    assert grpc_api.MAX_ANSWER_BYTES == 64 * 1024 * 1024  # docs/configuration.md, docs/client.md
