"""Pushes are traced as joins are: one server span a request, over HTTP and gRPC."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from featurestore.api.grpc import PUSH_SPAN, GrpcApi
from featurestore.api.routes import PUSH_PATH
from featurestore.push import PushService
from featurestore.v1 import featurestore_pb2 as pb
from tests.unit.test_api_edges import HANG_GUARD, FakeContext, client, http_api, make_engine, only_span

TRACE = "0af7651916cd43dd8448eb211c80319c"
TRACEPARENT = f"00-{TRACE}-b7ad6b7169203331-01"


async def test_an_http_push_is_a_span_of_the_caller_s_trace(spans: InMemorySpanExporter) -> None:
    body = {"feature_view": "fast", "rows": {"user_id": [1], "a": [2]}}
    async with client(http_api(make_engine())) as c:
        r = await asyncio.wait_for(
            c.post(PUSH_PATH, json=body, headers={"traceparent": TRACEPARENT}), HANG_GUARD
        )
    assert r.status_code == 200
    span = only_span(spans)
    assert span.name == "POST " + PUSH_PATH
    assert f"{span.context.trace_id:032x}" == TRACE
    assert span.status.status_code is StatusCode.UNSET


async def test_an_http_push_that_fails_records_its_error_on_its_span(spans: InMemorySpanExporter) -> None:
    body = {"feature_view": "nope", "rows": {"user_id": [1], "a": [2]}}
    async with client(http_api(make_engine())) as c:
        r = await c.post(PUSH_PATH, json=body)
    assert r.status_code == 404
    span = only_span(spans)
    assert span.attributes is not None and span.attributes["featurestore.error"] == "NOT_FOUND"


class TracedContext(FakeContext):
    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return (("traceparent", TRACEPARENT),)


async def test_a_grpc_push_is_a_span_of_the_caller_s_trace_and_carries_its_error(
    spans: InMemorySpanExporter,
) -> None:
    engine = make_engine()
    api = GrpcApi(engine, PushService(engine), deadline_ms=50)
    req = pb.PushRequest(feature_view="slow")  # a frozen store: past its deadline
    req.columns.add(name="user_id").int64_values.values.append(1)
    req.columns.add(name="x").int64_values.values.append(2)
    ctx = TracedContext()
    with pytest.raises(grpc.aio.AbortError):
        await asyncio.wait_for(api.push(req.SerializeToString(), ctx), HANG_GUARD)
    span = only_span(spans)
    assert span.name == PUSH_SPAN == "featurestore.v1.FeatureService/Push"
    assert f"{span.context.trace_id:032x}" == TRACE
    assert span.attributes is not None and span.attributes["featurestore.error"] == "DEADLINE_EXCEEDED"
    assert span.status.status_code is StatusCode.ERROR
