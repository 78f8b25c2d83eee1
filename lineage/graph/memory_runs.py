"""The in-process graph's job runs (a base class of InMemoryGraph, lineage/graph/memory.py):
the runs with their READ / PUBLISHED / OF edges and data versions, and indexes of the runs
by view, by table read and by table written, newest first, so `changes` reads only the
runs it answers. It scanned every run kept (10,000: a week of one stream view) and parsed
the times of all that matched, 36 ms a call (review s56 #1)."""

from __future__ import annotations

import heapq
from collections import defaultdict
from collections.abc import Iterable, Sequence

from lineage.graph import nodes as describe
from lineage.graph.memory_edges import Edges, Validity
from lineage.graph.memory_index import Timeline
from lineage.runs import DataVersion, JobRunEvent, time_ms

RunKey = tuple[str, str]  # ("view", view) | ("read", table) | ("wrote", table)


def _keys(run: JobRunEvent) -> set[RunKey]:
    return {("view", run.view), *(("read", t) for t in run.inputs), *(("wrote", t) for t in run.outputs)}


def _at(run: JobRunEvent) -> int:
    return time_ms(run.ended_at or run.started_at)  # a change's time (nodes.change)


class MemoryRuns(Edges):
    def __init__(self, max_runs: int) -> None:
        super().__init__()
        self._tables: set[str] = set()
        self._max_runs = max_runs
        self._runs: dict[str, JobRunEvent] = {}  # oldest first reported first
        self._data_versions: dict[str, DataVersion] = {}
        # newest first: keyed by minus the change's time, ties by run id (as Bolt's ORDER BY)
        self._runs_by: defaultdict[RunKey, Timeline[JobRunEvent]] = defaultdict(Timeline)

    async def write_runs(self, runs: Sequence[JobRunEvent]) -> None:
        for run in runs:
            describe.check(run)  # all or nothing: a bad one fails before any write
        for run in describe.fold(runs):
            old = self._runs.get(run.run_id)
            if old is not None and run.state == "START" and old.state != "START":
                continue  # a late START never undoes the end of its run
            if old is not None:
                self._unindex(old)
            self._runs[run.run_id] = run
            for key in _keys(run):
                self._runs_by[key].add(-_at(run), run.run_id, run)
            started = time_ms(run.started_at)
            for table in run.inputs:
                self._tables.add(table)
                if ("READ", run.run_id, table) not in self._edges:
                    self._add_edge(("READ", run.run_id, table), Validity(started))
            dv = run.data_version
            if dv is not None:
                published = time_ms(dv.published_at)
                self._data_versions[dv.id] = dv
                for edge in (("PUBLISHED", run.run_id, dv.id), ("OF", dv.id, dv.view)):
                    if edge not in self._edges:
                        self._add_edge(edge, Validity(published))
            while len(self._runs) > self._max_runs:
                self._forget_run(next(iter(self._runs)))

    def _unindex(self, run: JobRunEvent) -> None:
        for key in _keys(run):
            timeline = self._runs_by[key]
            timeline.remove(-_at(run), run.run_id)
            if not len(timeline):
                del self._runs_by[key]

    def _forget_run(self, run_id: str) -> None:
        """Bounded like the events: the oldest run goes with its edges and data version."""
        run = self._runs.pop(run_id)
        self._unindex(run)
        for edge in [("READ", run_id, t) for t in run.inputs]:
            self._drop_edge(edge)
        dv = run.data_version
        if dv is not None:
            self._drop_edge(("PUBLISHED", run_id, dv.id))
            if not self._in_index.get(("PUBLISHED", dv.id)):  # no other run published it
                self._data_versions.pop(dv.id, None)
                self._drop_edge(("OF", dv.id, dv.view))

    def _recent_runs(self, keys: Iterable[RunKey], since_ms: int | None, limit: int) -> list[JobRunEvent]:
        """The newest ``limit`` runs under any of ``keys`` that changed at ``since_ms`` or
        later, newest first: a merge of the keys' timelines, read only as far as it keeps."""
        hi = None if since_ms is None else -since_ms + 1  # -at <= -since
        lines = [self._runs_by[k].scan(None, hi) for k in keys if k in self._runs_by]
        out: list[JobRunEvent] = []
        seen: set[str] = set()
        for _, run_id, run in heapq.merge(*lines, key=lambda row: (row[0], row[1])):
            if run_id not in seen:
                seen.add(run_id)
                out.append(run)
                if len(out) >= limit:
                    break
        return out
