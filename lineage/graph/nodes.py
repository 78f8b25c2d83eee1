"""What a node of the topology says about itself (its ``attributes``), and a run as a
change: shared by both graph adapters so they answer alike."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from lineage.graph.base import FeatureInfo
from lineage.graph.topology import TIMED as TIMED  # re-exported
from lineage.graph.topology import Change, Node, node_id
from lineage.runs import DataVersion, JobRunEvent, time_ms


def check(run: JobRunEvent) -> None:
    """Raise when a run's times do not parse (before any of a batch is written)."""
    time_ms(run.started_at)
    if run.ended_at:
        time_ms(run.ended_at)
    if run.data_version is not None:
        time_ms(run.data_version.published_at)


def fold(runs: Sequence[JobRunEvent]) -> list[JobRunEvent]:
    """One report per run id, in the order of their last report: the last, except that a
    START never replaces an earlier COMPLETE or FAIL of its run (a late START changes
    nothing). A Bolt batch is one statement whose rows all see the graph as it was before
    it (review s56 #3: [COMPLETE, START] left the run started), so both graphs write the
    batch folded."""
    kept: dict[str, JobRunEvent] = {}
    for run in runs:
        old = kept.pop(run.run_id, None)
        kept[run.run_id] = old if old is not None and run.state == "START" and old.state != "START" else run
    return list(kept.values())


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def feature_node(f: FeatureInfo) -> Node:
    return Node(
        node_id("feature", f.id),
        "feature",
        f.id,
        {
            "view": f.view,
            "dtype": f.dtype,
            "version": f.version,
            "versions": list(f.versions),
            "owner": f.owner,
            "description": f.description,
        },
    )


def named_node(kind: str, name: str, owner: str = "", description: str = "") -> Node:
    attributes = {"owner": owner, "description": description} if kind in ("view", "service") else {}
    return Node(node_id(kind, name), kind, name, attributes)


def run_node(run: JobRunEvent) -> Node:
    return Node(
        node_id("run", run.run_id),
        "run",
        f"{run.job} {run.started_at[:19]}",
        {
            "job": run.job,
            "runId": run.run_id,
            "state": run.state,
            "startedAt": run.started_at,
            "endedAt": run.ended_at,
            "rowsRead": run.rows_read,
            "rowsWritten": run.rows_written,
            "inputs": list(run.inputs),
            "outputs": list(run.outputs),
            "view": run.view,
            "dataVersion": run.data_version.id if run.data_version else "",
            "error": run.error,
        },
    )


def data_version_node(dv: DataVersion) -> Node:
    return Node(
        node_id("data_version", dv.id),
        "data_version",
        dv.id,
        {
            "view": dv.view,
            "version": dv.version,
            "rows": dv.rows,
            "publishedAt": dv.published_at,
            "fingerprint": dv.fingerprint,
        },
    )


def change(run: JobRunEvent) -> Change:
    if run.state == "FAIL":
        kind = "run_failed"
    elif run.state == "START":
        kind = "run_started"
    else:
        kind = "data_version" if run.data_version is not None else "run_complete"
    at = time_ms(run.ended_at or run.started_at)
    dv = run.data_version.id if run.data_version else ""
    return Change(at, kind, run.job, run.run_id, run.rows_written, dv)
