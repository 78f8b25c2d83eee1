"""A job's run reports into a graph server (``GraphRuns``): each within a deadline, and
after one that failed the graph is skipped, for the job's run or for ``skip_seconds``
(``stream run``: a window). With a real hung server: tests/integration/test_lineage_jobs_hang.py."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from prometheus_client import REGISTRY

from featurestore.graph_writer import GraphRuns
from lineage.graph.base import GraphUnavailable
from lineage.graph.memory import InMemoryGraph
from lineage.runs import JobRunEvent, RunRecorder


class Failing(InMemoryGraph):
    """Each write fails as a graph that is down does, or hangs (``hang``) until cancelled."""

    def __init__(self, hang: bool = False) -> None:
        super().__init__()
        self.hang = hang
        self.tries = 0

    async def write_runs(self, runs: Sequence[JobRunEvent]) -> None:
        self.tries += 1
        if self.hang:
            await asyncio.Event().wait()
        raise GraphUnavailable("graph write failed 6 times")


def unrecorded(state: str) -> float:
    return REGISTRY.get_sample_value("featurestore_lineage_runs_unrecorded_total", {"state": state}) or 0.0


async def test_reports_after_one_the_graph_did_not_answer_in_time_skip_it_and_count_as_unrecorded() -> None:
    graph = Failing(hang=True)
    recorder = RunRecorder(GraphRuns(graph, deadline=0.05))
    before = {state: unrecorded(state) for state in ("START", "COMPLETE")}
    for view in ("a", "b"):
        run = await recorder.started(f"materialize:{view}")
        await recorder.finished(run, rows_read=1, rows_written=1)
    assert graph.tries == 1  # the three reports after the hung one never waited for it
    assert {state: unrecorded(state) - n for state, n in before.items()} == {"START": 2, "COMPLETE": 2}


async def test_a_graph_that_was_unavailable_is_tried_again_once_its_skip_seconds_have_passed() -> None:
    graph = Failing()
    recorder = RunRecorder(GraphRuns(graph, skip_seconds=0.0))  # stream run: a window; here none
    run = await recorder.started("stream:v")
    await recorder.finished(run, rows_read=0, rows_written=0)
    assert graph.tries == 2
    skipped = Failing()
    skipping = RunRecorder(GraphRuns(skipped, skip_seconds=3600.0))
    run = await skipping.started("stream:v")
    await skipping.finished(run, rows_read=0, rows_written=0)
    assert skipped.tries == 1
