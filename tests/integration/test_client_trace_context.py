"""The trace context featurestore.client sends, against a real server over HTTP and gRPC,
blocking and asyncio: a ``traceparent`` that is no W3C trace context is refused before
anything is sent (it was retried as "cannot reach" over HTTP, INTERNAL over gRPC, or a
bare UnicodeEncodeError), the same on every variant; the forms the server honours are
sent and honoured. Without one, what the configured OpenTelemetry propagator injects is
sent: traceparent, and tracestate and baggage (they were dropped), checked at stand-ins
that record the headers and metadata they get (the server reads only traceparent, and
shows nothing of the others) and honoured by the real server."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest
from opentelemetry import baggage, context, propagate, trace
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.propagators.textmap import TextMapPropagator
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags, TraceState
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from featurestore import tracing
from featurestore.client import AsyncFeatureClient, FeatureClient, InvalidArgumentError, NotFoundError
from featurestore.client.options import check_traceparent
from tests.integration.client_demo import address, demo_server
from tests.support import CLIENT_DEADLINE_S, ServerProcess

TRANSPORTS = ["http", "grpc"]
AGE = ["user_profile:age"]
TRACE, PARENT = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
VALID = f"00-{TRACE}-{PARENT}-01"
INVALID = {
    "garbage": "garbage",
    "header injection": "00-abc\r\nx-evil: 1",
    "non-ASCII": "tëst",
    "non-ASCII in a valid form": f"00-{TRACE[:-1]}é-{PARENT}-01",
    "trailing space": VALID + " ",
    "leading tab": "\t" + VALID,
    "uppercase hex": VALID.upper(),
    "version ff": f"ff-{TRACE}-{PARENT}-01",
    "version 00 with a fifth field": VALID + "-what",
    "zero trace id": f"00-{'0' * 32}-{PARENT}-01",
    "zero parent id": f"00-{TRACE}-{'0' * 16}-01",
    "short trace id": f"00-{TRACE[:-2]}-{PARENT}-01",
    "future version with a control character": f"01-{TRACE}-{PARENT}-01-a\x01",
}


@pytest.fixture(scope="module")
def demo(demo_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    yield from demo_server(demo_dir, tmp_path_factory, "client-trace")


def assert_refused(error: BaseException, traceparent: str) -> None:
    assert isinstance(error, InvalidArgumentError) and isinstance(error, ValueError), repr(error)
    assert error.code == "INVALID_ARGUMENT"
    assert error.message.startswith(f"traceparent {traceparent!r:.80}: "), error.message
    assert "expected 00-<32 hex digits: trace id>" in error.message


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("kind", INVALID)
def test_a_traceparent_that_is_no_w3c_trace_context_is_refused_before_anything_is_sent(
    demo: ServerProcess, transport: str, kind: str
) -> None:
    retries: list[int] = []
    where = address(demo, transport)
    with FeatureClient(where, deadline=CLIENT_DEADLINE_S, on_retry=lambda n, e: retries.append(n)) as client:
        with pytest.raises(InvalidArgumentError) as refused:
            client.join({"user_id": [17]}, AGE, traceparent=INVALID[kind])
        assert client.join({"user_id": [17]}, AGE, traceparent=VALID).trace_id == TRACE  # still usable
    assert_refused(refused.value, INVALID[kind])
    assert retries == []


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("kind", INVALID)
async def test_the_asyncio_client_refuses_such_a_traceparent_alike(
    demo: ServerProcess, transport: str, kind: str
) -> None:
    retries: list[int] = []
    where = address(demo, transport)
    async with AsyncFeatureClient(where, on_retry=lambda n, e: retries.append(n)) as client:
        with pytest.raises(InvalidArgumentError) as refused:
            await client.join({"user_id": [17]}, AGE, traceparent=INVALID[kind])
    assert_refused(refused.value, INVALID[kind])
    assert retries == []


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_traceparent_that_is_no_str_is_refused_as_a_type_error(demo: ServerProcess, transport: str) -> None:
    with FeatureClient(address(demo, transport)) as client, pytest.raises(InvalidArgumentError) as refused:
        client.join({"user_id": [17]}, AGE, traceparent=VALID.encode())  # type: ignore[arg-type]
    assert isinstance(refused.value, TypeError) and refused.value.message.startswith("traceparent: a str")


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize(
    "traceparent",
    [
        VALID,
        f"00-{TRACE}-{PARENT}-00",
        f"01-{TRACE}-{PARENT}-01",
        f"cc-{TRACE}-{PARENT}-01-later-fields",
        f"01-{TRACE}-{PARENT}-01-vendor x",
    ],
    ids=["sampled", "not sampled", "version 01", "a later version's fields", "a space inside later fields"],
)
def test_each_form_the_server_honours_is_sent_and_puts_the_join_into_that_trace(
    demo: ServerProcess, transport: str, traceparent: str
) -> None:
    with FeatureClient(address(demo, transport), deadline=CLIENT_DEADLINE_S) as client:
        assert client.join({"user_id": [17]}, AGE, traceparent=traceparent).trace_id == TRACE


@pytest.mark.parametrize(
    "traceparent",
    [
        *INVALID.values(),
        VALID,
        f"01-{TRACE}-{PARENT}-01",
        f"cc-{TRACE}-{PARENT}-01-x",
        f"cc-{TRACE}-{PARENT}-01-x y",
        f"00-{TRACE}-{PARENT}-ff",
    ],
)
def test_the_client_sends_exactly_what_the_servers_parser_honours_that_a_header_can_carry(
    traceparent: str,
) -> None:
    """featurestore/tracing.py strips spaces and tabs around the value (HTTP syntax) and
    takes any text in a later version's fields; the client sends what a header carries
    as it is: printable ASCII, spaces inside but not around it (the server would strip
    those, gRPC would carry them)."""
    try:
        check_traceparent(traceparent)
        client_sends = True
    except InvalidArgumentError:
        client_sends = False
    server_honours = tracing._trace_id_from(traceparent) != 0
    if traceparent == traceparent.strip() and all(" " <= c <= "~" for c in traceparent):
        assert client_sends == server_honours
    else:
        assert not client_sends


# -- what the propagator injects: traceparent, tracestate, baggage ------------------------


class Recorders:
    """An HTTP server and a gRPC server that record the headers / metadata of each join
    and answer NOT_FOUND."""

    def __init__(self) -> None:
        import http.server
        from concurrent import futures

        self.seen: list[dict[str, str]] = []
        seen = self.seen

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers["content-length"]))
                seen.append({k.lower(): v for k, v in self.headers.items()})
                body = json.dumps({"error": {"code": "NOT_FOUND", "message": "recorded", "details": []}})
                self.send_response(404)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body.encode())

            def log_message(self, *args: Any) -> None:
                pass

        self.http = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.http.serve_forever, daemon=True).start()

        def join(request: bytes, ctx: grpc.ServicerContext) -> bytes:
            seen.append(dict(ctx.invocation_metadata()))
            ctx.abort(grpc.StatusCode.NOT_FOUND, "recorded")
            raise AssertionError("abort raises")

        self.grpc = grpc.server(futures.ThreadPoolExecutor(2))
        handler = grpc.unary_unary_rpc_method_handler(join)
        self.grpc.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler("featurestore.v1.FeatureService", {"Join": handler}),)
        )
        self.grpc_port = self.grpc.add_insecure_port("127.0.0.1:0")
        self.grpc.start()

    def address(self, transport: str) -> str:
        port = self.http.server_address[1] if transport == "http" else self.grpc_port
        return f"{transport}://127.0.0.1:{port}"

    def close(self) -> None:
        self.http.shutdown()
        self.http.server_close()
        self.grpc.stop(None)


@pytest.fixture(scope="module")
def recorders() -> Iterator[Recorders]:
    r = Recorders()
    yield r
    r.close()


@pytest.fixture
def propagator() -> Iterator[Callable[[TextMapPropagator], None]]:
    """Sets the global propagator (the default W3C trace context and baggage one first),
    restored after the test."""
    before = propagate.get_global_textmap()
    propagate.set_global_textmap(
        CompositePropagator([TraceContextTextMapPropagator(), W3CBaggagePropagator()])
    )
    yield propagate.set_global_textmap
    propagate.set_global_textmap(before)


@contextmanager
def caller_span() -> Iterator[None]:
    """A current span of trace TRACE with a tracestate, and baggage: what a service that
    calls featurestore while it serves a traced request has."""
    span = SpanContext(
        int(TRACE, 16),
        int(PARENT, 16),
        False,
        TraceFlags(1),
        TraceState([("vendor", "v1"), ("other", "x-y")]),
    )
    ctx = baggage.set_baggage("tenant", "t 42", trace.set_span_in_context(NonRecordingSpan(span)))
    token = context.attach(ctx)
    try:
        yield
    finally:
        context.detach(token)


def recorded_join(recorders: Recorders, transport: str, asyncio_: bool, **join: Any) -> dict[str, str]:
    import asyncio

    recorders.seen.clear()

    async def async_join() -> None:
        async with AsyncFeatureClient(recorders.address(transport)) as client:
            await client.join({"user_id": [17]}, AGE, **join)

    with pytest.raises(NotFoundError, match="recorded"):
        if asyncio_:
            asyncio.run(async_join())  # (in a task that copies the caller's context)
        else:
            with FeatureClient(recorders.address(transport)) as client:
                client.join({"user_id": [17]}, AGE, **join)
    (seen,) = recorders.seen
    return seen


VARIANTS = [("http", False), ("grpc", False), ("http", True), ("grpc", True)]
VARIANT_IDS = ["http", "grpc", "asyncio http", "asyncio grpc"]


@pytest.mark.parametrize(("transport", "asyncio_"), VARIANTS, ids=VARIANT_IDS)
def test_the_default_propagators_traceparent_tracestate_and_baggage_are_all_sent(
    recorders: Recorders, propagator: Any, transport: str, asyncio_: bool
) -> None:
    with caller_span():
        injected: dict[str, str] = {}
        propagate.inject(injected)
        seen = recorded_join(recorders, transport, asyncio_)
    assert sorted(injected) == ["baggage", "traceparent", "tracestate"]
    assert {name: seen.get(name) for name in injected} == injected
    assert seen["traceparent"] == VALID and seen["tracestate"] == "vendor=v1,other=x-y"


@pytest.mark.parametrize(("transport", "asyncio_"), VARIANTS, ids=VARIANT_IDS)
def test_a_given_traceparent_replaces_the_spans_trace_context_but_not_its_baggage(
    recorders: Recorders, propagator: Any, transport: str, asyncio_: bool
) -> None:
    given = f"00-{'ab' * 16}-{'cd' * 8}-01"
    with caller_span():
        seen = recorded_join(recorders, transport, asyncio_, traceparent=given)
    assert seen["traceparent"] == given and "tracestate" not in seen  # (the span's: another trace's)
    assert seen["baggage"] == "tenant=t+42"


class Injecting(TextMapPropagator):
    """A propagator that injects what it is given (a B3 header, a value no header carries)."""

    def __init__(self, headers: dict[str, str]) -> None:
        self.headers = headers

    def inject(self, carrier: Any, context: Any = None, setter: Any = None) -> None:
        carrier.update(self.headers)

    def extract(self, carrier: Any, context: Any = None, getter: Any = None) -> Any:
        return context

    @property
    def fields(self) -> set[str]:
        return set(self.headers)


@pytest.mark.parametrize(("transport", "asyncio_"), VARIANTS, ids=VARIANT_IDS)
def test_only_the_w3c_headers_a_header_can_carry_are_taken_from_the_propagator(
    recorders: Recorders, propagator: Callable[[TextMapPropagator], None], transport: str, asyncio_: bool
) -> None:
    propagator(
        Injecting({"b3": f"{TRACE}-{PARENT}-1", "Baggage": "k=v", "tracestate": "a=1", "x-other": "1"})
    )
    seen = recorded_join(recorders, transport, asyncio_)
    assert "b3" not in seen and "x-other" not in seen
    assert "tracestate" not in seen  # (no traceparent to go with)
    assert seen["baggage"] == "k=v"
    propagator(Injecting({"traceparent": VALID, "tracestate": "a=1 ", "baggage": "k=v\nx: 1"}))
    seen = recorded_join(recorders, transport, asyncio_)
    assert seen["traceparent"] == VALID and "tracestate" not in seen and "baggage" not in seen


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_the_server_honours_the_propagated_trace_context_sent_with_tracestate_and_baggage(
    demo: ServerProcess, propagator: Any, transport: str
) -> None:
    with caller_span(), FeatureClient(address(demo, transport), deadline=CLIENT_DEADLINE_S) as client:
        assert client.join({"user_id": [17]}, AGE).trace_id == TRACE
