"""Edges of the API adapters driven in-process: deadlines (header, gRPC margin, push),
cancellation and error outcomes in metrics and spans, push type coercion, and the
W3C traceparent parser. The real-server tests live in tests/integration."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Sequence
from pathlib import Path

import grpc
import httpx
import pyarrow as pa
import pytest
import uvicorn
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Span, StatusCode
from prometheus_client import REGISTRY

from featurestore import deadlines, metrics, tracing
from featurestore.api import docs
from featurestore.api.grpc import JOIN_METHOD, JOIN_SPAN, GrpcApi, engine_budget
from featurestore.api.http import HttpApi, JoinEndpoint
from featurestore.api.routes import JOIN_PATH, PUSH_PATH
from featurestore.definitions.snapshot import new_snapshot
from featurestore.errors import DeadlineExceeded, InvalidArgument, NotFound
from featurestore.health import Readiness
from featurestore.join import JoinEngine, JoinRequest, JoinResult, Limits
from featurestore.model import DType, Entity, Feature, FeatureView, make_definitions
from featurestore.plan import ServingState
from featurestore.push import PushRequest, PushResult, PushService, to_table
from featurestore.rows import conform
from featurestore.sources.base import ViewQuery, ViewRead
from featurestore.sources.memory import MemorySource
from featurestore.v1 import featurestore_pb2 as pb

U = Entity("user_id", DType.INT64)
FAST = FeatureView("fast", (U,), (Feature("a", DType.INT64),))
NUMS = FeatureView("nums", (U,), (Feature("f", DType.FLOAT64), Feature("e", DType.FLOAT32_VECTOR)))
SLOW = FeatureView("slow", (U,), (Feature("x", DType.INT64),), online_store="slow")
DOCS = Path(__file__).resolve().parents[2] / "docs"


# Seconds a test waits for something that happens at once in a passing run: the bound
# only turns a regression (a hang) into a failure.
HANG_GUARD = 30


class FrozenSource(MemorySource):
    """A store that accepts a request and never answers (a paused Redis)."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.entered = asyncio.Event()
        self.answer = asyncio.Event()  # never set

    async def read(self, queries: Sequence[ViewQuery]) -> list[ViewRead | BaseException]:
        self.entered.set()
        await self.answer.wait()
        raise AssertionError("unreachable")

    async def write(
        self, view: FeatureView, rows: pa.Table, data_version: int, *, create: bool = True
    ) -> int:
        self.entered.set()
        await self.answer.wait()
        raise AssertionError("unreachable")


class FailingEngine(JoinEngine):
    """Raises the given exception from every join and remembers the deadline it got, and
    when (``time.monotonic()``) it got it."""

    def __init__(self, base: JoinEngine, error: BaseException) -> None:
        super().__init__(base.stores, base.state, base.limits)
        self.error = error
        self.deadlines_seen: list[float] = []
        self.called_at: list[float] = []

    async def join(self, req: JoinRequest, deadline: float, span: Span | None = None) -> JoinResult:
        self.deadlines_seen.append(deadline)
        self.called_at.append(time.monotonic())
        raise self.error


def make_engine(deadline_seconds: float = 0.5) -> JoinEngine:
    stores = {"default": MemorySource("default"), "slow": FrozenSource("slow")}
    defs = make_definitions("p", [U], [FAST, NUMS, SLOW], [])
    return JoinEngine(
        stores, ServingState(new_snapshot(defs, 1)), Limits(max_rows=100, deadline_seconds=deadline_seconds)
    )


def frozen(engine: JoinEngine) -> FrozenSource:
    store = engine.stores["slow"]
    assert isinstance(store, FrozenSource)
    return store


class FakeContext:
    """The part of grpc.aio.ServicerContext the handlers use."""

    def __init__(self, remaining: float | None = None) -> None:
        self.remaining = remaining
        self.code: grpc.StatusCode | None = None
        self.details = ""

    def time_remaining(self) -> float | None:
        return self.remaining

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return ()

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        self.code, self.details = code, details
        raise grpc.aio.AbortError()


def sample(name: str, route: str, protocol: str, outcome: str) -> float:
    metrics.flush()
    labels = {"route": route, "protocol": protocol, "outcome": outcome}
    return REGISTRY.get_sample_value(name, labels) or 0.0


def counts(route: str, protocol: str, outcome: str) -> tuple[float, float]:
    """(requests counted, request durations observed) for one label set."""
    return (
        sample("featurestore_requests_total", route, protocol, outcome),
        sample("featurestore_request_duration_seconds_count", route, protocol, outcome),
    )


def join_message(view: str, users: list[int]) -> bytes:
    req = pb.JoinRequest(features=[f"{view}:{FEATURE_OF[view]}"])
    req.entities.add(name="user_id").int64_values.values.extend(users)
    return req.SerializeToString()


FEATURE_OF = {"fast": "a", "slow": "x"}


def http_api(engine: JoinEngine, *, deadline_ms: int = 500, max_body_bytes: int = 10_000) -> HttpApi:
    return HttpApi(
        engine,
        PushService(engine),
        lambda: Readiness(True),
        max_body_bytes=max_body_bytes,
        deadline_ms=deadline_ms,
    )


def client(api: HttpApi) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=api)
    return httpx.AsyncClient(transport=transport, base_url="http://featurestore")


# -- deadlines ------------------------------------------------------------------------


def test_deadline_header_only_lowers_the_configured_deadline() -> None:
    endpoint = JoinEndpoint(make_engine(), deadline_ms=500)
    assert endpoint._deadline(None) == 500
    assert endpoint._deadline(b"50") == 50
    assert endpoint._deadline(b"500") == 500
    assert endpoint._deadline(b"60000") == 500  # in range, but never above the configured
    for bad in (b"0", b"60001", b"-5", b"soon"):
        with pytest.raises(InvalidArgument, match="x-featurestore-deadline-ms"):
            endpoint._deadline(bad)


async def test_a_long_deadline_header_does_not_extend_the_join() -> None:
    engine = FailingEngine(make_engine(), NotFound("nothing"))
    endpoint = JoinEndpoint(engine, deadline_ms=500)
    body = json.dumps({"entities": {"user_id": [1]}, "features": ["fast:a"]}).encode()
    before = time.monotonic()
    status, *_ = await endpoint(body, None, None, b"60000")
    after = time.monotonic()
    assert status == 404
    # the deadline is taken between before and after: the configured 500 ms less the
    # answer's 10%, not 60 s
    assert before + 0.45 <= engine.deadlines_seen[0] <= after + 0.45


# The margin tests' bounds are exact, not slack: the deadline is taken after ``before`` and
# before the engine or service is called, so with the margin once it lies within
# [before + 0.9 x budget, called + 0.9 x budget]; twice (0.81) or none (1.0) falls outside
# unless the request took 90 ms or more to reach the engine. 1 s budgets: margins of 100 ms.
EPSILON = 1e-6


async def test_an_http_join_leaves_the_answer_a_tenth_of_its_deadline_header() -> None:
    engine = FailingEngine(make_engine(), NotFound("nothing"))
    endpoint = JoinEndpoint(engine, deadline_ms=5000)
    body = json.dumps({"entities": {"user_id": [1]}, "features": ["fast:a"]}).encode()
    before = time.monotonic()
    await endpoint(body, None, None, b"1000")
    (seen,), (called,) = engine.deadlines_seen, engine.called_at
    assert before + 0.9 - EPSILON <= seen <= called + 0.9 + EPSILON


class RecordingPush(PushService):
    """Refuses every push and remembers the deadline it got, and when it got it."""

    def __init__(self, engine: JoinEngine) -> None:
        super().__init__(engine)
        self.deadlines_seen: list[float | None] = []
        self.called_at: list[float] = []

    async def push(self, req: PushRequest, deadline: float | None = None) -> PushResult:
        self.deadlines_seen.append(deadline)
        self.called_at.append(time.monotonic())
        raise NotFound("nothing")


async def test_an_http_push_leaves_the_answer_a_tenth_of_its_deadline_header() -> None:
    engine = make_engine()
    push = RecordingPush(engine)
    api = HttpApi(engine, push, lambda: Readiness(True), max_body_bytes=10_000, deadline_ms=5000)
    body = {"feature_view": "fast", "rows": {"user_id": [1], "a": [2]}}
    async with client(api) as c:
        before = time.monotonic()
        r = await c.post(PUSH_PATH, json=body, headers={"x-featurestore-deadline-ms": "1000"})
    assert r.status_code == 404
    (seen,), (called,) = push.deadlines_seen, push.called_at
    assert seen is not None and before + 0.9 - EPSILON <= seen <= called + 0.9 + EPSILON


async def test_a_grpc_join_and_push_leave_the_answer_a_tenth_of_the_configured_deadline() -> None:
    engine = FailingEngine(make_engine(), NotFound("nothing"))
    push = RecordingPush(engine)
    api = GrpcApi(engine, push, deadline_ms=1000)
    req = pb.PushRequest(feature_view="fast")
    req.columns.add(name="user_id").int64_values.values.append(1)
    before = time.monotonic()
    for call in (
        api.join(join_message("fast", [1]), FakeContext()),
        api.push(req.SerializeToString(), FakeContext()),
    ):
        with pytest.raises(grpc.aio.AbortError):
            await call
    (joined,), (pushed,) = engine.deadlines_seen, push.deadlines_seen
    assert pushed is not None
    # 900 ms of the 1,000 counted from the call's start (EPSILON: the bounds are exact)
    for seen, called in ((joined, engine.called_at[0]), (pushed, push.called_at[0])):
        assert before + 0.9 - EPSILON <= seen <= called + 0.9 + EPSILON


def test_the_engine_budget_keeps_a_margin_for_the_answer() -> None:
    assert deadlines.engine_budget(0.5) == pytest.approx(0.45)  # 10% kept back
    assert deadlines.engine_budget(0.01) == pytest.approx(0.008)  # at least 2 ms kept back
    assert deadlines.engine_budget(0.002) == pytest.approx(0.001)  # never more than half
    assert deadlines.engine_budget(0.0) <= 0  # nothing left: the engine answers DEADLINE_EXCEEDED
    assert deadlines.engine_budget(-0.1) <= 0


def test_grpc_engine_budget_is_the_sooner_deadline_less_the_margin() -> None:
    assert engine_budget(0.5, None) == pytest.approx(0.45)  # no call deadline: the configured one
    assert engine_budget(0.5, 10.0) == pytest.approx(0.45)  # a far call deadline does not extend it
    assert engine_budget(0.5, 0.2) == pytest.approx(0.18)  # the call's, 10% kept back
    assert engine_budget(0.5, 0.01) == pytest.approx(0.008)
    assert engine_budget(0.5, 0.0) <= 0


async def test_grpc_join_on_a_frozen_store_answers_partial_within_the_call_deadline() -> None:
    engine = make_engine()
    api = GrpcApi(engine, PushService(engine), deadline_ms=500)
    out = await api.join(join_message("slow", [1]), FakeContext(remaining=0.2))
    resp = pb.JoinResponse.FromString(out)
    assert resp.metadata.partial is True
    assert list(resp.results[1].statuses) == [pb.UNAVAILABLE]


async def test_push_to_a_frozen_store_is_deadline_exceeded() -> None:
    engine = make_engine(deadline_seconds=0.05)
    req = PushRequest("slow", {"user_id": [1], "x": [2]})
    with pytest.raises(DeadlineExceeded, match="did not confirm the write") as info:
        await asyncio.wait_for(PushService(engine).push(req), HANG_GUARD)
    assert info.value.details == [{"feature_view": "slow", "store": "slow"}]
    assert frozen(engine).entered.is_set()


async def test_push_whose_deadline_passed_writes_nothing() -> None:
    engine = make_engine()
    req = PushRequest("slow", {"user_id": [1], "x": [2]})
    with pytest.raises(DeadlineExceeded, match="nothing was written"):
        await PushService(engine).push(req, time.monotonic() - 1)
    assert not frozen(engine).entered.is_set()


async def test_http_push_to_a_frozen_store_is_504_with_an_error_body() -> None:
    api = http_api(make_engine(), deadline_ms=50)
    before = counts(PUSH_PATH, "http", "DEADLINE_EXCEEDED")
    body = {"feature_view": "slow", "rows": {"user_id": [1], "x": [2]}}
    async with client(api) as c:
        r = await asyncio.wait_for(c.post(PUSH_PATH, json=body), HANG_GUARD)
    assert r.status_code == 504
    err = r.json()["error"]
    assert err["code"] == "DEADLINE_EXCEEDED" and "'slow'" in err["message"]
    after = counts(PUSH_PATH, "http", "DEADLINE_EXCEEDED")
    assert (after[0] - before[0], after[1] - before[1]) == (1, 1)


async def test_http_push_honours_the_deadline_header_and_refuses_a_bad_one() -> None:
    api = http_api(make_engine(), deadline_ms=60_000)  # the configured deadline: a minute
    body = {"feature_view": "slow", "rows": {"user_id": [1], "x": [2]}}
    async with client(api) as c:
        short = c.post(PUSH_PATH, json=body, headers={"x-featurestore-deadline-ms": "50"})
        r = await asyncio.wait_for(short, HANG_GUARD)
        bad = await c.post(PUSH_PATH, json=body, headers={"x-featurestore-deadline-ms": "soon"})
    assert r.status_code == 504 and r.json()["error"]["code"] == "DEADLINE_EXCEEDED"
    assert bad.status_code == 400 and "x-featurestore-deadline-ms" in bad.json()["error"]["message"]


async def test_grpc_push_to_a_frozen_store_is_deadline_exceeded() -> None:
    engine = make_engine()
    api = GrpcApi(engine, PushService(engine), deadline_ms=50)
    req = pb.PushRequest(feature_view="slow")
    req.columns.add(name="user_id").int64_values.values.append(1)
    req.columns.add(name="x").int64_values.values.append(2)
    ctx = FakeContext(remaining=None)
    with pytest.raises(grpc.aio.AbortError):
        await asyncio.wait_for(api.push(req.SerializeToString(), ctx), HANG_GUARD)
    assert ctx.code == grpc.StatusCode.DEADLINE_EXCEEDED and "'slow'" in ctx.details


# -- cancellation and metrics ---------------------------------------------------------


async def test_cancelled_grpc_join_is_counted_as_cancelled() -> None:
    engine = make_engine(deadline_seconds=60)
    api = GrpcApi(engine, PushService(engine), deadline_ms=60_000)
    before = counts(JOIN_METHOD, "grpc", "CANCELLED")
    task = asyncio.ensure_future(api.join(join_message("slow", [1]), FakeContext()))
    await asyncio.wait_for(frozen(engine).entered.wait(), HANG_GUARD)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    after = counts(JOIN_METHOD, "grpc", "CANCELLED")
    assert (after[0] - before[0], after[1] - before[1]) == (1, 1)


async def test_cancelled_http_join_is_counted_as_cancelled() -> None:
    engine = make_engine(deadline_seconds=60)
    endpoint = JoinEndpoint(engine, deadline_ms=60_000)
    body = json.dumps({"entities": {"user_id": [1]}, "features": ["slow:x"]}).encode()
    before = counts(JOIN_PATH, "http", "CANCELLED")
    task = asyncio.ensure_future(endpoint(body, None, None, None))
    await asyncio.wait_for(frozen(engine).entered.wait(), HANG_GUARD)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    after = counts(JOIN_PATH, "http", "CANCELLED")
    assert (after[0] - before[0], after[1] - before[1]) == (1, 1)


async def test_too_large_and_push_errors_are_counted_and_timed() -> None:
    api = http_api(make_engine(), max_body_bytes=100)
    join_before = counts(JOIN_PATH, "http", "RESOURCE_EXHAUSTED")
    push_before = counts(PUSH_PATH, "http", "NOT_FOUND")
    async with client(api) as c:
        r = await c.post(JOIN_PATH, content=b"x" * 1000)
        assert r.status_code == 413
        r = await c.post(PUSH_PATH, json={"feature_view": "nope", "rows": {"user_id": [1], "a": [1]}})
        assert r.status_code == 404
    join_after = counts(JOIN_PATH, "http", "RESOURCE_EXHAUSTED")
    push_after = counts(PUSH_PATH, "http", "NOT_FOUND")
    assert (join_after[0] - join_before[0], join_after[1] - join_before[1]) == (1, 1)
    assert (push_after[0] - push_before[0], push_after[1] - push_before[1]) == (1, 1)


# -- push values ----------------------------------------------------------------------


def test_push_takes_large_integers_into_float_columns() -> None:
    big = 2**60 + 1  # not exactly representable as a double
    t = to_table(NUMS, {"user_id": [1, 2], "f": [big, 3], "e": [[big, 2**24 + 1], None]}, 100, {"user_id": U})
    assert t.column("f").to_pylist() == [float(big), 3.0]
    assert t.column("e").type == pa.list_(pa.float32())
    assert t.column("e").to_pylist() == [[float(2**60), float(2**24)], None]


def test_push_refuses_what_float32_cannot_hold() -> None:
    with pytest.raises(InvalidArgument) as info:
        to_table(NUMS, {"user_id": [1, 2], "f": [1.0, 2.0], "e": [[1.0], [0.5, 1e300]]}, 100, {"user_id": U})
    assert "'e'" in info.value.message and "row 1" in info.value.message and "element 1" in info.value.message
    assert info.value.details[0] | {"column": "e", "row": 1, "element": 1} == info.value.details[0]
    with pytest.raises(InvalidArgument, match="outside the float64 range"):
        to_table(NUMS, {"user_id": [1], "f": [10**400], "e": [[1.0]]}, 100, {"user_id": U})
    # NaN and infinities have no JSON form (docs/storage.md, "What a write stores"): in a
    # vector they are refused, naming the element; a float64 one is stored as null
    for bad in (float("-inf"), float("nan")):
        with pytest.raises(
            InvalidArgument, match=r"row 0 is a list whose element 1 is float .*, not a finite number"
        ):
            to_table(NUMS, {"user_id": [1], "f": [1.0], "e": [[1.0, bad]]}, 100, {"user_id": U})
    t = to_table(
        NUMS, {"user_id": [1, 2], "f": [float("inf"), float("nan")], "e": [[1.0]] * 2}, 100, {"user_id": U}
    )
    assert conform(NUMS, t).column("f").to_pylist() == [None, None]


# -- tracing --------------------------------------------------------------------------

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"


@pytest.mark.parametrize(
    "header",
    [
        f"00-{TRACE_ID}-{PARENT_ID}-01",
        f"00-{TRACE_ID}-{PARENT_ID}-00",
        f" 00-{TRACE_ID}-{PARENT_ID}-01\t",  # optional whitespace around a header value
        f"01-{TRACE_ID}-{PARENT_ID}-01-future-field",  # a later version may add fields
        f"cc-{TRACE_ID}-{PARENT_ID}-01",
    ],
)
def test_valid_traceparent_is_honoured(header: str) -> None:
    assert tracing._trace_id_from(header) == int(TRACE_ID, 16)
    span = tracing.start_request_span("t", header)
    assert tracing.trace_id_hex(span) == TRACE_ID


@pytest.mark.parametrize(
    "header",
    [
        "",
        f"00-{TRACE_ID}-{PARENT_ID}",  # no flags
        f"00-{TRACE_ID.upper()}-{PARENT_ID}-01",  # uppercase hex
        f"00-+{TRACE_ID[1:]}-{PARENT_ID}-01",  # int() would take a sign
        f"00--{TRACE_ID[1:]}-{PARENT_ID}-01",
        f"00-0x{TRACE_ID[2:]}-{PARENT_ID}-01",  # ... a 0x prefix
        f"00-{TRACE_ID[:8]}_{TRACE_ID[9:]}-{PARENT_ID}-01",  # ... an underscore
        f"00- {TRACE_ID[1:]}-{PARENT_ID}-01",  # ... inner whitespace
        f"ff-{TRACE_ID}-{PARENT_ID}-01",  # version ff is invalid
        f"00-{'0' * 32}-{PARENT_ID}-01",  # all-zero trace id
        f"00-{TRACE_ID}-{'0' * 16}-01",  # all-zero parent id
        f"00-{TRACE_ID}-{PARENT_ID}-01-extra",  # version 00 has exactly four fields
        f"00-{TRACE_ID}-{PARENT_ID}-1",
        f"0-{TRACE_ID}-{PARENT_ID}-01",
        f"00-{TRACE_ID}0-{PARENT_ID}-01",
    ],
)
def test_invalid_traceparent_starts_a_new_trace(header: str) -> None:
    assert tracing._trace_id_from(header) == 0
    span = tracing.start_request_span("t", header)
    assert span.get_span_context().trace_id != 0
    assert tracing.trace_id_hex(span) != TRACE_ID


def only_span(exporter: InMemorySpanExporter) -> ReadableSpan:
    finished = exporter.get_finished_spans()
    assert len(finished) == 1
    return finished[0]


def exception_events(span: ReadableSpan) -> list[str]:
    return [
        str(e.attributes["exception.type"]) for e in span.events if e.name == "exception" and e.attributes
    ]


async def test_http_internal_error_marks_the_span_as_error(spans: InMemorySpanExporter) -> None:
    endpoint = JoinEndpoint(FailingEngine(make_engine(), RuntimeError("boom")), deadline_ms=500)
    body = json.dumps({"entities": {"user_id": [1]}, "features": ["fast:a"]}).encode()
    status, *_ = await endpoint(body, None, None, None)
    assert status == 500
    span = only_span(spans)
    assert span.status.status_code is StatusCode.ERROR
    assert [t.rsplit(".", 1)[-1] for t in exception_events(span)] == ["RuntimeError"]


async def test_http_client_error_records_but_does_not_mark_error(spans: InMemorySpanExporter) -> None:
    endpoint = JoinEndpoint(FailingEngine(make_engine(), NotFound("no such view")), deadline_ms=500)
    body = json.dumps({"entities": {"user_id": [1]}, "features": ["fast:a"]}).encode()
    status, *_ = await endpoint(body, None, None, None)
    assert status == 404
    span = only_span(spans)
    # OpenTelemetry's conventions leave a server span's status unset for a 4xx
    assert span.status.status_code is StatusCode.UNSET
    assert [t.rsplit(".", 1)[-1] for t in exception_events(span)] == ["NotFound"]
    assert span.attributes is not None and span.attributes["featurestore.error"] == "NOT_FOUND"


async def test_grpc_span_name_and_error_status(spans: InMemorySpanExporter) -> None:
    engine = FailingEngine(make_engine(), RuntimeError("boom"))
    api = GrpcApi(engine, PushService(engine), deadline_ms=500)
    ctx = FakeContext()
    with pytest.raises(grpc.aio.AbortError):
        await api.join(join_message("fast", [1]), ctx)
    assert ctx.code == grpc.StatusCode.INTERNAL
    span = only_span(spans)
    assert span.name == JOIN_SPAN == "featurestore.v1.FeatureService/Join"
    assert span.status.status_code is StatusCode.ERROR
    assert [t.rsplit(".", 1)[-1] for t in exception_events(span)] == ["RuntimeError"]


async def test_grpc_deadline_error_marks_the_span_as_error(spans: InMemorySpanExporter) -> None:
    engine = make_engine()
    api = GrpcApi(engine, PushService(engine), deadline_ms=500)
    ctx = FakeContext(remaining=0.0)  # the call's deadline has passed on arrival
    with pytest.raises(grpc.aio.AbortError):
        await api.join(join_message("fast", [1]), ctx)
    assert ctx.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert only_span(spans).status.status_code is StatusCode.ERROR


# -- docs -----------------------------------------------------------------------------


def test_docs_and_openapi_word_the_504s_alike() -> None:
    text = " ".join((DOCS / "api.md").read_text().replace("`", "").split()).lower()
    assert docs.JOIN_DEADLINE_TEXT.lower() in text
    assert docs.PUSH_DEADLINE_TEXT.lower() in text


async def test_the_openapi_document_lists_the_auth_refusals_and_the_join_s_shed_with_retry_after() -> None:
    async with client(http_api(make_engine())) as c:
        spec = (await c.get("/openapi.json")).json()
    operations = {
        path: next(iter(spec["paths"][path].values())) for path in (JOIN_PATH, PUSH_PATH, "/v1/registry")
    }
    for path, operation in operations.items():
        for status in ("401", "403"):
            assert "WWW-Authenticate" in operation["responses"][status]["headers"], (path, status)
    shed = operations[JOIN_PATH]["responses"]["503"]
    assert "Retry-After" in shed["headers"] and "retry_after_seconds" in shed["description"]


async def test_a_chunked_join_still_running_when_the_drain_ends_is_a_json_503_not_uvicorn_s_500(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A join read through ASGI (a chunked body) that still runs when uvicorn's graceful
    timeout cancels it is answered as the direct cycle answers it: 503 UNAVAILABLE with
    Retry-After and the close, counted CANCELLED, no ERROR logged (before: uvicorn's
    plain-text 500 and an "Exception in ASGI application" traceback)."""
    engine = make_engine(deadline_seconds=60)
    api = http_api(engine, deadline_ms=60_000)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    config = uvicorn.Config(api, access_log=False, timeout_graceful_shutdown=0.3, lifespan="off")  # type: ignore[arg-type]
    srv = uvicorn.Server(config)
    task = asyncio.create_task(srv.serve(sockets=[sock]))
    before = counts(JOIN_PATH, "http", "CANCELLED")
    body = json.dumps({"entities": {"user_id": [1]}, "features": ["slow:x"]}).encode()
    head = f"POST {JOIN_PATH} HTTP/1.1\r\nhost: t\r\ncontent-type: application/json\r\n"
    request = f"{head}transfer-encoding: chunked\r\n\r\n{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n"
    try:
        while not srv.started:  # noqa: ASYNC110 - uvicorn has no startup event
            await asyncio.sleep(0.01)
        reader, writer = await asyncio.open_connection("127.0.0.1", sock.getsockname()[1])
        writer.write(request)
        await asyncio.wait_for(frozen(engine).entered.wait(), HANG_GUARD)
        with caplog.at_level("INFO"):
            srv.should_exit = True
            raw = await asyncio.wait_for(reader.read(), HANG_GUARD)  # to the close
            await asyncio.wait_for(task, HANG_GUARD)
        writer.close()
    finally:
        srv.should_exit = True
        await asyncio.wait_for(task, HANG_GUARD)
    head_bytes, _, answer = raw.partition(b"\r\n\r\n")
    lines = head_bytes.decode().lower().split("\r\n")
    assert lines[0] == "http/1.1 503 service unavailable", raw
    assert {"connection: close", "retry-after: 1", "content-type: application/json"} <= set(lines[1:])
    assert json.loads(answer)["error"]["code"] == "UNAVAILABLE"
    assert [
        r.getMessage() for r in caplog.records if r.levelname == "ERROR" and "Exception" in r.getMessage()
    ] == []
    assert "a join unanswered when the drain ended: answered 503 and closed" in caplog.text
    after = counts(JOIN_PATH, "http", "CANCELLED")
    assert (after[0] - before[0], after[1] - before[1]) == (1, 1)
