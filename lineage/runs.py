"""Job runs and the data versions they publish, as lineage events.

A job (materialization of one view, a stream processor's commit window) reports its run
through a ``RunRecorder``: ``started`` when it begins, ``finished`` when it ends, with
what it read, what it wrote and the data version it published. Each report is one
``JobRunEvent``; it travels the same sink as served-feature events (straight into the
in-process graph, or JSON on the lineage Kafka topic, where ``"type": "job_run"`` tells
it apart) and, when configured, to OpenLineage (``lineage.openlineage``).

    recorder = RunRecorder(sink)                       # lineage.sinks.LineageSink
    run = await recorder.started("stream:clicks", inputs=["kafka://clicks"], outputs=[...])
    ...
    await recorder.finished(run, rows_read=n, rows_written=n, data_version=DataVersion(...))
    await recorder.failed(run, error="...")            # outcome FAIL

The graph keeps one JobRun node per ``run_id`` (START and COMPLETE/FAIL of one run are
one node), READ edges to its input datasets, and a PUBLISHED edge to the DataVersion
node of the view it published (docs/lineage.md).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Literal, Protocol

import msgspec

from lineage import metrics
from lineage.events import DECODE_ERRORS, Count, Name, malformed, parse_timestamp

log = logging.getLogger(__name__)

State = Literal["START", "COMPLETE", "FAIL"]


class DataVersion(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """A published version of a view's data."""

    view: Name
    version: Count
    rows: Count
    published_at: Name  # ISO 8601 UTC
    fingerprint: str  # of the source it was loaded from (path, size, mtime; or table name)

    @property
    def id(self) -> str:
        return f"{self.view}@{self.version}"


class JobRunEvent(
    msgspec.Struct,
    frozen=True,
    forbid_unknown_fields=True,
    kw_only=True,
    tag="job_run",
    tag_field="type",
):
    job: Name  # "materialize:user_profile", "stream:clicks_5m"
    run_id: Name
    state: State
    started_at: Name  # ISO 8601 UTC
    ended_at: str = ""  # empty while running
    inputs: list[str] = []  # datasets read: a batch source uri or table, a topic
    outputs: list[str] = []  # datasets written: online tables
    view: str = ""  # the feature view whose data it moved
    rows_read: Count = 0
    rows_written: Count = 0
    data_version: DataVersion | None = None
    schema: list[tuple[str, str]] = []  # (column, dtype) of what it wrote: OpenLineage's schema facet
    error: str = ""

    @property
    def key(self) -> bytes:
        return f"run:{self.job}".encode()


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(JobRunEvent)


class _Kind(msgspec.Struct):
    type: str = "served"


_probe = msgspec.json.Decoder(_Kind)


def encode_run(event: JobRunEvent) -> bytes:
    return _encoder.encode(event)


def decode_run(raw: bytes) -> JobRunEvent:
    try:
        event = _decoder.decode(raw)
    except DECODE_ERRORS as e:
        raise malformed(e) from None
    parse_timestamp(event.started_at)
    if event.ended_at:
        parse_timestamp(event.ended_at)
    if event.data_version is not None:
        parse_timestamp(event.data_version.published_at)
    return event


def is_run(raw: bytes) -> bool:
    """Whether a lineage topic message is a job run (else a served-feature event)."""
    try:
        return _probe.decode(raw).type == "job_run"
    except RecursionError as e:  # too deep to tell: and so too deep for either decoder
        raise malformed(e) from None
    except DECODE_ERRORS:
        return False  # the served-event decoder names what is wrong with it


def time_ms(iso: str) -> int:
    return int(parse_timestamp(iso).timestamp() * 1000)


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class RunSink(Protocol):
    async def send_runs(self, runs: Sequence[JobRunEvent]) -> None: ...


class RunListener(Protocol):
    """Sees every run report too (OpenLineage)."""

    def emit(self, run: JobRunEvent) -> None: ...

    def close(self) -> None: ...


class RunRecorder:
    """What a job calls to be recorded. Recording never fails the job: a sink or
    listener error is logged and the job goes on (its lineage is then missing); a report
    the sink did not take is counted too (``featurestore_lineage_runs_unrecorded_total``)."""

    def __init__(self, sink: RunSink | None = None, listeners: Sequence[RunListener] = ()) -> None:
        self.sink = sink
        self.listeners = list(listeners)

    async def started(
        self,
        job: str,
        *,
        inputs: Sequence[str] = (),
        outputs: Sequence[str] = (),
        view: str = "",
        schema: Sequence[tuple[str, str]] = (),
        run_id: str | None = None,
    ) -> JobRunEvent:
        run = JobRunEvent(
            job=job,
            run_id=run_id or str(uuid.uuid4()),
            state="START",
            started_at=now_iso(),
            inputs=list(inputs),
            outputs=list(outputs),
            view=view,
            schema=list(schema),
        )
        await self._record(run)
        return run

    async def finished(
        self,
        run: JobRunEvent,
        *,
        rows_read: int,
        rows_written: int,
        data_version: DataVersion | None = None,
    ) -> JobRunEvent:
        done = msgspec.structs.replace(
            run,
            state="COMPLETE",
            ended_at=now_iso(),
            rows_read=rows_read,
            rows_written=rows_written,
            data_version=data_version,
        )
        await self._record(done)
        return done

    async def failed(self, run: JobRunEvent, *, error: str) -> JobRunEvent:
        done = msgspec.structs.replace(run, state="FAIL", ended_at=now_iso(), error=error[:500])
        await self._record(done)
        return done

    async def _record(self, run: JobRunEvent) -> None:
        metrics.RUNS.labels(run.state).inc()
        for listener in self.listeners:
            try:
                listener.emit(run)
            except Exception:
                log.exception("run %s of %s: listener %r failed", run.run_id, run.job, listener)
        if self.sink is not None:
            try:
                await self.sink.send_runs([run])
            except Exception as e:  # the graph down or hung, mostly: one line, no traceback
                metrics.RUNS_UNRECORDED.labels(run.state).inc()
                log.error(
                    "run %s of %s (%s) not recorded in lineage: %s: %s",
                    run.run_id,
                    run.job,
                    run.state,
                    type(e).__name__,
                    e,
                )


class BufferedRuns:
    """A RunSink that holds runs until a graph exists to take them (``serve --demo``
    materializes before its in-process graph is built)."""

    def __init__(self) -> None:
        self.runs: list[JobRunEvent] = []

    async def send_runs(self, runs: Sequence[JobRunEvent]) -> None:
        self.runs.extend(runs)
