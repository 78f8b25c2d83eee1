"""Where log records go and how they look: ``log_format: text`` (one line for a person)
or ``json`` (one object per line for a log pipeline, with the OpenTelemetry trace and
span ids of the request being served, so a log line and its trace find each other)."""

from __future__ import annotations

import logging

from opentelemetry import trace

from featurestore import tracing

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(process)d] %(message)s"
FORMATS = ("text", "json")


class TraceIds(logging.Filter):
    """Adds ``trace_id`` and ``span_id`` (hex, as W3C traceparent writes them) to each record:
    of the current OpenTelemetry span, else of the request span this task serves."""

    def filter(self, record: logging.LogRecord) -> bool:
        ctx = trace.get_current_span().get_span_context()
        if not ctx.is_valid:
            span = tracing.request_span.get()
            ctx = span.get_span_context() if span is not None else ctx
        if ctx.is_valid:
            record.trace_id = format(ctx.trace_id, "032x")
            record.span_id = format(ctx.span_id, "016x")
        return True


def json_formatter() -> logging.Formatter:
    from pythonjsonlogger.json import JsonFormatter

    formatter: logging.Formatter = JsonFormatter(
        "%(asctime)s %(levelname)s %(name)s %(process)d %(message)s",
        rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
        timestamp=False,
    )
    return formatter


def configure_logging(level: str, log_format: str = "text") -> None:
    """Apply a config's ``log_level`` and ``log_format`` to the root logger's handlers
    (``main`` installed one on stderr; uvicorn and grpc log through the root)."""
    root = logging.getLogger()
    root.setLevel(level.upper())
    formatter = json_formatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)
    if not root.handlers:
        root.addHandler(logging.StreamHandler())
    for handler in root.handlers:
        handler.setFormatter(formatter)
        if log_format == "json" and not any(isinstance(f, TraceIds) for f in handler.filters):
            handler.addFilter(TraceIds())
