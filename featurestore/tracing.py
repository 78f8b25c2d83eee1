"""OpenTelemetry setup and the few span helpers the serving path uses.

Every request gets a trace id (returned as ``metadata.trace_id``) even when it is not
sampled, so a client can quote it. Recording is opt-in by sample ratio and exporter:
with no exporter configured nothing is recorded, and the hot path pays only for id
generation. An incoming W3C ``traceparent`` is honoured (same trace id, parent's
sampling decision).
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ParentBased, TraceIdRatioBased
from opentelemetry.trace import NonRecordingSpan, Span, SpanContext
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

log = logging.getLogger(__name__)

_propagator = TraceContextTextMapPropagator()
tracer = trace.get_tracer("featurestore")
_exporting = False  # set by setup_tracing


@dataclass(frozen=True, slots=True)
class TracingConfig:
    exporter: str = "none"  # none | console | otlp
    sample_ratio: float = 0.01
    otlp_endpoint: str = "http://127.0.0.1:4317"
    service_name: str = "featurestore"


def setup_tracing(cfg: TracingConfig) -> None:
    exporter: SpanExporter | None = None
    if cfg.exporter == "console":
        exporter = ConsoleSpanExporter()
    elif cfg.exporter == "otlp":
        try:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (  # type: ignore[import-not-found]
                OTLPSpanExporter,
            )
        except ImportError:
            log.warning("tracing.exporter=otlp but opentelemetry-exporter-otlp is not installed")
        else:
            exporter = OTLPSpanExporter(endpoint=cfg.otlp_endpoint, insecure=True)
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
        return NonRecordingSpan(SpanContext(trace_id, random.getrandbits(64) or 1, is_remote=False))
    ctx: Context | None = None
    if traceparent:
        ctx = _propagator.extract({"traceparent": traceparent})
    return tracer.start_span(name, context=ctx, kind=trace.SpanKind.SERVER)


def _trace_id_from(traceparent: str | None) -> int:
    """The trace id of a W3C ``traceparent`` (version-traceid-parentid-flags), or 0."""
    if not traceparent or len(traceparent) < 55 or traceparent[2] != "-" or traceparent[35] != "-":
        return 0
    try:
        return int(traceparent[3:35], 16)
    except ValueError:
        return 0


def child_context(span: Span) -> Context:
    return trace.set_span_in_context(span)


def trace_id_hex(span: Span) -> str:
    return format(span.get_span_context().trace_id, "032x")
