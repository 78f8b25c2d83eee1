"""log_format: json writes one JSON object per line, stamped with the trace and span ids
of the request being served (or of the current OpenTelemetry span); text stays text."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from featurestore.config import load_config
from featurestore.errors import InvalidArgument
from tests.support import ROOT

CHILD = textwrap.dedent(
    """
    import asyncio, logging
    from opentelemetry import trace
    from featurestore import tracing
    from featurestore.logconfig import configure_logging

    logging.basicConfig()
    configure_logging("info", {fmt!r})
    log = logging.getLogger("featurestore.test")
    log.info("before any request")

    async def request():
        span = tracing.start_request_span("POST /v1/feature/join", "00-" + "ab" * 16 + "-" + "cd" * 8 + "-01")
        log.warning("while serving %s", "a join")
        return span

    span = asyncio.run(request())
    print(format(span.get_span_context().span_id, "016x"), flush=True)
    with trace.use_span(trace.NonRecordingSpan(trace.SpanContext(0x42, 0x43, is_remote=False))):
        log.info("inside a span")
    """
)


def run(fmt: str) -> tuple[list[str], str]:
    out = subprocess.run(
        [sys.executable, "-c", CHILD.format(fmt=fmt)], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    return out.stderr.splitlines(), out.stdout.strip()


def test_json_logs_carry_the_request_trace_and_span_ids() -> None:
    lines, request_span_id = run("json")
    before, serving, inside = (json.loads(line) for line in lines)
    assert before["message"] == "before any request" and "trace_id" not in before
    assert before["level"] == "INFO" and before["logger"] == "featurestore.test" and before["time"]
    assert serving["message"] == "while serving a join"
    assert serving["trace_id"] == "ab" * 16 and serving["span_id"] == request_span_id
    assert (inside["trace_id"], inside["span_id"]) == (format(0x42, "032x"), format(0x43, "016x"))


def test_text_logs_stay_one_readable_line() -> None:
    lines, _ = run("text")
    assert (
        len(lines) == 3
        and "WARNING featurestore.test" in lines[1]
        and lines[1].endswith("while serving a join")
    )


def test_the_log_format_is_a_config_key_and_an_environment_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("log_format: json\n")
    assert load_config(path).log_format == "json"
    path.write_text("log_format: xml\n")
    with pytest.raises(InvalidArgument, match="log_format: unknown log format 'xml'; use text, json"):
        load_config(path)
    monkeypatch.setenv("FEATURESTORE_LOG_FORMAT", "JSON")
    assert load_config().log_format == "json"
