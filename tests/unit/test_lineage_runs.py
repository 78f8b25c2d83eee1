"""Job run reports: wire format, the recorder's guarantees, the walk's steps and the
OpenLineage mapping of dataset names."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from prometheus_client import REGISTRY

from lineage.events import LineageEvent, MalformedEvent, encode_event
from lineage.graph.topology import split_id, steps
from lineage.openlineage import dataset, run_uuid, to_openlineage
from lineage.runs import BufferedRuns, DataVersion, JobRunEvent, RunRecorder, decode_run, encode_run, is_run

SERVED = LineageEvent(
    feature_id="v:f", feature_version=1, source_table="redis://fs/p/v", timestamp="2026-01-01T00:00:00Z",
    upstream_deps=[], registry_version=1, served_count=1, trace_ids=[], service="fs@a",
)  # fmt: skip


async def test_a_run_travels_as_json_tagged_job_run_and_comes_back_equal() -> None:
    sink = BufferedRuns()
    recorder = RunRecorder(sink)
    run = await recorder.started("materialize:v", inputs=["file:///d/v.parquet"], outputs=["redis://fs/p/v"])
    dv = DataVersion(
        view="v", version=3, rows=10, published_at="2026-01-01T00:00:00Z", fingerprint="sha256:1"
    )
    done = await recorder.finished(run, rows_read=10, rows_written=10, data_version=dv)
    assert [r.state for r in sink.runs] == ["START", "COMPLETE"] and done.run_id == run.run_id
    raw = encode_run(done)
    assert raw.startswith(b'{"type":"job_run"') and is_run(raw)
    assert decode_run(raw) == done
    assert not is_run(encode_event(SERVED)) and not is_run(b"not json")


def test_a_run_with_a_time_that_is_not_utc_is_malformed() -> None:
    bad = JobRunEvent(job="j", run_id="r", state="START", started_at="2026-01-01T00:00:00+02:00")
    with pytest.raises(MalformedEvent, match="not in UTC"):
        decode_run(encode_run(bad))
    with pytest.raises(MalformedEvent):
        decode_run(b'{"type": "job_run", "job": "j", "run_id": "r", "state": "DONE", "started_at": "x"}')


async def test_a_failing_sink_never_fails_the_job() -> None:
    class Broken:
        async def send_runs(self, runs: Sequence[JobRunEvent]) -> None:
            raise ConnectionError("down")

    recorder = RunRecorder(Broken())
    before = {state: unrecorded(state) for state in ("START", "FAIL")}
    run = await recorder.started("materialize:v")
    failed = await recorder.failed(run, error="x" * 2000)
    assert failed.state == "FAIL" and len(failed.error) == 500 and failed.ended_at
    # each report the sink did not take is counted, by state (review s58 #3: logged only)
    assert {state: unrecorded(state) - n for state, n in before.items()} == {"START": 1, "FAIL": 1}


def unrecorded(state: str) -> float:
    return REGISTRY.get_sample_value("featurestore_lineage_runs_unrecorded_total", {"state": state}) or 0.0


def test_walks_never_pass_through_a_server_and_follow_the_data() -> None:
    assert steps("server", upstream=False) == []
    assert sorted(steps("feature", upstream=True)) == [
        ("CONTAINS", False), ("DERIVED_FROM", True), ("PRODUCED_BY", True),
    ]  # fmt: skip
    assert sorted(steps("table", upstream=False)) == [("PRODUCED_BY", False), ("READ", False)]
    assert steps("view", upstream=True) == [("OF", False)]
    with pytest.raises(ValueError, match="kind:name"):
        split_id("nothing")


def test_openlineage_dataset_names_and_run_ids() -> None:
    assert dataset("redis://fs/demo/user_profile", "ns") == ("redis://fs", "demo/user_profile")
    assert dataset("file:///data/users.parquet", "ns") == ("file", "/data/users.parquet")
    assert dataset("clickhouse://db.table", "ns") == ("clickhouse://db.table", "db.table")
    assert dataset("warehouse.users", "ns") == ("ns", "warehouse.users")
    assert run_uuid("not-a-uuid") == run_uuid("not-a-uuid") != run_uuid("other")
    event = to_openlineage(
        JobRunEvent(job="j", run_id="r1", state="FAIL", started_at="2026-01-01T00:00:00Z", error="boom"), "ns"
    )
    facets = event.run.facets or {}
    assert getattr(facets["errorMessage"], "message", None) == "boom" and event.job.name == "j"


async def test_the_memory_graph_forgets_its_oldest_run_with_its_edges_and_data_version() -> None:
    from lineage.graph.memory import InMemoryGraph

    graph = InMemoryGraph(max_runs=2)

    def run(n: int) -> JobRunEvent:
        at = f"2026-01-01T00:00:0{n}Z"
        dv = DataVersion(view="v", version=n, rows=1, published_at=at, fingerprint="f")
        return JobRunEvent(
            job="materialize:v", run_id=f"r{n}", state="COMPLETE", started_at=at, ended_at=at,
            inputs=[f"file:///in{n}"], view="v", data_version=dv,
        )  # fmt: skip

    for n in (1, 2, 3):
        await graph.write_runs([run(n)])
    kept = [n.id for n in await graph.nodes(["run:r1", "data_version:v@1", "run:r2", "run:r3"])]
    assert kept == ["run:r2", "run:r3"]
    assert (await graph.incident(["table:file:///in1"], None, False)).edges == []
    assert [c.run_id for c in await graph.changes(None, "file:///in1", None, 10)] == []
    assert [c.run_id for c in await graph.changes(None, "file:///in3", None, 10)] == ["r3"]
