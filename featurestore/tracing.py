"""OpenTelemetry setup and the few span helpers the serving path uses.

Every request gets a trace id even when it is not sampled; a successful join returns
it as ``metadata.trace_id`` so a client can quote it (an error body has no field for it:
the contract's error object is code, message and details). Recording is opt-in by
sample ratio and exporter: with no exporter configured nothing is recorded, and the hot
path pays only for id generation. A valid incoming W3C ``traceparent`` is honoured
(same trace id, parent's sampling decision); an invalid one is ignored and the request
starts a new trace, as the W3C spec asks.
"""

from __future__ import annotations

import logging
import random
import re
from contextvars import ContextVar

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ParentBased, TraceIdRatioBased
from opentelemetry.trace import NonRecordingSpan, Span, SpanContext, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from featurestore.config import TracingConfig
from featurestore.extras import require

log = logging.getLogger(__name__)

_propagator = TraceContextTextMapPropagator()
tracer = trace.get_tracer("featurestore")
_exporting = False  # set by setup_tracing
# The span of the request the current task serves (spans are passed explicitly, not made
# current): what log_format json stamps on a log line (featurestore/logconfig.py).
request_span: ContextVar[Span | None] = ContextVar("featurestore_request_span", default=None)


def setup_tracing(cfg: TracingConfig) -> None:
    exporter: SpanExporter | None = None
    if cfg.exporter == "console":
        exporter = ConsoleSpanExporter()
    elif cfg.exporter == "otlp":
        otlp = require("opentelemetry.exporter.otlp.proto.grpc.trace_exporter", "tracing.exporter: otlp")
        exporter = otlp.OTLPSpanExporter(endpoint=cfg.otlp_endpoint, insecure=True)
    global _exporting
    _exporting = exporter is not None
    sampler = ParentBased(TraceIdRatioBased(cfg.sample_ratio)) if exporter else ALWAYS_OFF
    provider = TracerProvider(sampler=sampler, resource=Resource.create({"service.name": cfg.service_name}))
    if exporter is not None:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    global tracer
    tracer = provider.get_tracer("featurestore")


def start_request_span(name: str, traceparent: str | None) -> Span:
    if not _exporting:
        # Nothing would be exported: skip the SDK (sampler, id generator, context
        # plumbing) and mint the ids here. Costs a third of the SDK's unsampled path.
        trace_id = _trace_id_from(traceparent) or random.getrandbits(128) or 1
        span: Span = NonRecordingSpan(SpanContext(trace_id, random.getrandbits(64) or 1, is_remote=False))
        request_span.set(span)
        return span
    ctx: Context | None = None
    # Same validation on both paths, so whether a trace is joined does not depend on
    # whether an exporter happens to be configured.
    if _trace_id_from(traceparent):
        ctx = _propagator.extract({"traceparent": traceparent})
    span = tracer.start_span(name, context=ctx, kind=trace.SpanKind.SERVER)
    request_span.set(span)
    return span


# version-traceid-parentid-flags, lowercase hex only; later versions may append fields
# after another '-', version 00 may not.
_TRACEPARENT = re.compile(
    r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}(-.*)?", re.ASCII | re.DOTALL
)
_ZERO_TRACE_ID = "0" * 32
_ZERO_PARENT_ID = "0" * 16


def _trace_id_from(traceparent: str | None) -> int:
    """The trace id of a valid W3C ``traceparent``, or 0 when there is none or it is invalid."""
    if not traceparent:
        return 0
    # Spaces or tabs around a header value are HTTP syntax (RFC 9110 OWS), not part of
    # it; anywhere inside, they make the value invalid.
    m = _TRACEPARENT.fullmatch(traceparent.strip(" \t"))
    if m is None:
        return 0
    version, trace_id, parent_id, rest = m.groups()
    if version == "ff" or (version == "00" and rest is not None):
        return 0
    if trace_id == _ZERO_TRACE_ID or parent_id == _ZERO_PARENT_ID:
        return 0
    return int(trace_id, 16)


def record_error(span: Span, exc: BaseException, *, server_fault: bool) -> None:
    """Attach a failed request's exception to its span.

    Only a failure of the server (5xx, or INTERNAL, UNAVAILABLE, DEADLINE_EXCEEDED on
    gRPC) sets the span status to ERROR: the OpenTelemetry HTTP and gRPC conventions
    leave it unset for a client's bad request, so error-rate views of traces count the
    server's faults, not its callers'.
    """
    if not span.is_recording():
        return
    span.record_exception(exc)
    if server_fault:
        span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))


def child_context(span: Span) -> Context:
    return trace.set_span_in_context(span)


def trace_id_hex(span: Span) -> str:
    return format(span.get_span_context().trace_id, "032x")


def mark_shed(span: Span | None, reason: str) -> None:
    """Note on a request's span that the load shedder refused it after it started (the row
    cap, once the join was decoded): a refusal for capacity, not an error of the server's."""
    if span is not None and span.is_recording():
        span.set_attribute("featurestore.shed", reason)
