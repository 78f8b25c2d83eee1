"""Job runs as OpenLineage RunEvents (``lineage.openlineage``), through openlineage-python.

Each run report (lineage/runs.py) becomes one RunEvent: START, COMPLETE or FAIL, the job
``{namespace}/{job}`` (``materialize:user_profile``), the run id (a UUID; a job's own
non-UUID id is mapped to a stable UUID5), input datasets (what it read) and output
datasets (the online table) with a ``schema`` facet, ``outputStatistics`` (rows written)
and the published data version as ``version``; a failure carries ``errorMessage``.

Transports come from the client: http (Marquez and any OpenLineage receiver), kafka,
file (JSON lines), console. Sending happens on a thread of its own: an HTTP receiver
that is slow or down never blocks the event loop of the job or server that reports; what
cannot be sent is logged and counted (``featurestore_lineage_openlineage_total``).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from typing import Any

from openlineage.client import OpenLineageClient
from openlineage.client.event_v2 import InputDataset, Job, OutputDataset, Run, RunEvent, RunState
from openlineage.client.facet_v2 import (
    dataset_version_dataset,
    error_message_run,
    output_statistics_output_dataset,
    schema_dataset,
)

from lineage import metrics
from lineage.runs import JobRunEvent

log = logging.getLogger(__name__)

PRODUCER = "https://github.com/featurestore/featurestore"
_QUEUE = 10_000  # run reports waiting for the transport; one per job start/end, so generous
_NAMESPACE_UUID = uuid.UUID("6f1c3c1e-6a52-4f0e-9a55-0c6b1f1a0d51")


def dataset(uri: str, default_namespace: str) -> tuple[str, str]:
    """OpenLineage (namespace, name) of a dataset uri: ``scheme://authority`` and the
    rest (``redis://fs/demo/user_profile`` -> ``redis://fs``, ``demo/user_profile``;
    ``file:///data/users.parquet`` -> ``file``, ``/data/users.parquet``); a bare
    warehouse name keeps the configured namespace."""
    scheme, sep, rest = uri.partition("://")
    if not sep:
        return default_namespace, uri
    if scheme == "file":
        return "file", rest
    authority, _, path = rest.partition("/")
    return f"{scheme}://{authority}", path or authority


def run_uuid(run_id: str) -> str:
    try:
        return str(uuid.UUID(run_id))
    except ValueError:
        return str(uuid.uuid5(_NAMESPACE_UUID, run_id))


def to_openlineage(run: JobRunEvent, namespace: str) -> RunEvent:
    state = {"START": RunState.START, "COMPLETE": RunState.COMPLETE, "FAIL": RunState.FAIL}[run.state]
    schema = schema_dataset.SchemaDatasetFacet(
        fields=[schema_dataset.SchemaDatasetFacetFields(name=n, type=t) for n, t in run.schema]
    )
    outputs = []
    for uri in run.outputs:
        facets: dict[str, Any] = {"schema": schema}
        output_facets: dict[str, Any] = {}
        if run.state == "COMPLETE":
            output_facets["outputStatistics"] = (
                output_statistics_output_dataset.OutputStatisticsOutputDatasetFacet(rowCount=run.rows_written)
            )
        if run.data_version is not None:
            facets["version"] = dataset_version_dataset.DatasetVersionDatasetFacet(
                datasetVersion=str(run.data_version.version)
            )
        ns, name = dataset(uri, namespace)
        outputs.append(OutputDataset(namespace=ns, name=name, facets=facets, outputFacets=output_facets))
    inputs = [
        InputDataset(namespace=ns, name=name) for ns, name in (dataset(u, namespace) for u in run.inputs)
    ]
    run_facets: dict[str, Any] = {}
    if run.state == "FAIL":
        run_facets["errorMessage"] = error_message_run.ErrorMessageRunFacet(
            message=run.error or "failed", programmingLanguage="python"
        )
    return RunEvent(
        eventType=state,
        eventTime=run.ended_at or run.started_at,
        run=Run(runId=run_uuid(run.run_id), facets=run_facets),
        job=Job(namespace=namespace, name=run.job),
        producer=PRODUCER,
        inputs=inputs,
        outputs=outputs,
    )


def transport_config(settings: Any) -> dict[str, Any]:
    """The client's transport configuration from ``lineage.openlineage``."""
    kind = settings.transport
    if kind == "http":
        if not settings.url:
            raise ValueError("transport http needs url (e.g. http://marquez:5000)")
        config: dict[str, Any] = {
            "type": "http",
            "url": settings.url,
            "endpoint": settings.endpoint,
            "timeout": settings.timeout_seconds,
        }
        key = settings.api_key.get_secret_value()
        if key:
            config["auth"] = {"type": "api_key", "apiKey": key}
        return config
    if kind == "kafka":
        if not settings.bootstrap_servers:
            raise ValueError("transport kafka needs bootstrap_servers")
        return {
            "type": "kafka",
            "topic": settings.topic,
            "config": {"bootstrap.servers": settings.bootstrap_servers},
            "flush": True,
        }
    if kind == "file":
        if not settings.file:
            raise ValueError("transport file needs file (a path)")
        return {"type": "file", "log_file_path": settings.file, "append": True}
    if kind == "console":
        return {"type": "console"}
    raise ValueError(f"transport {kind!r} is not supported; use http, kafka, file or console")


class OpenLineageListener:
    """A RunListener (lineage/runs.py) that sends each run report to OpenLineage."""

    def __init__(self, client: OpenLineageClient, namespace: str, queue_size: int = _QUEUE) -> None:
        self.client = client
        self.namespace = namespace
        self._queue: queue.Queue[RunEvent | None] = queue.Queue(queue_size)
        self._thread = threading.Thread(target=self._send_all, name="openlineage", daemon=True)
        self._thread.start()

    @classmethod
    def from_settings(cls, settings: Any) -> OpenLineageListener:
        client = OpenLineageClient(config={"transport": transport_config(settings)})
        return cls(client, settings.namespace)

    def emit(self, run: JobRunEvent) -> None:
        try:
            self._queue.put_nowait(to_openlineage(run, self.namespace))
        except queue.Full:
            metrics.OPENLINEAGE.labels("dropped").inc()
            log.warning("openlineage: queue full, run %s of %s not sent", run.run_id, run.job)

    def _send_all(self) -> None:
        while (event := self._queue.get()) is not None:
            try:
                self.client.emit(event)
                metrics.OPENLINEAGE.labels("sent").inc()
            except Exception as e:
                metrics.OPENLINEAGE.labels("failed").inc()
                log.warning(
                    "openlineage: %s run event of %s not sent: %s", event.eventType, event.job.name, e
                )

    def close(self, timeout: float = 10.0) -> None:
        """Send what is queued (up to ``timeout`` seconds), then stop the sender. A
        receiver that hangs with the queue full costs ``timeout``, never a hung shutdown:
        what is still queued then is counted as dropped (the sender is a daemon thread)."""
        deadline = time.monotonic() + timeout
        try:
            self._queue.put(None, timeout=timeout)
            sentinel = 1
        except queue.Full:
            sentinel = 0
        self._thread.join(max(0.0, deadline - time.monotonic()))
        if self._thread.is_alive():
            left = max(0, self._queue.qsize() - sentinel)
            metrics.OPENLINEAGE.labels("dropped").inc(left)
            log.warning("openlineage: receiver still busy after %.1fs, %d run events not sent", timeout, left)
        self.client.close(max(0.0, deadline - time.monotonic()))
