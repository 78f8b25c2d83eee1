"""In-process lineage graph: the embedded default. Same model and answers as the Bolt
adapter (one contract suite), held in dicts with adjacency indexes, so a query touches
only the edges of the nodes it walks. Event history is bounded (``max_events``, oldest
dropped first); redelivery is recognised within that window. Job runs are bounded too
(``max_runs``: the oldest run goes with its READ/PUBLISHED edges and data version).
Windows, drift records and runs are kept in time order and every read waits for a turn
of the event loop of its own (lineage/graph/memory_index.py): it answers on the serving
loop."""

from __future__ import annotations

import heapq
from collections import defaultdict, deque
from collections.abc import Sequence
from dataclasses import replace

from lineage.events import LineageEvent
from lineage.graph import nodes as describe
from lineage.graph.base import (
    MAX_DEPTH,
    MAX_SERVED,
    MAX_WALK,
    DefinitionFacts,
    FeatureInfo,
    Impact,
    ServedBy,
    TableRef,
    event_key,
    event_time_ms,
    table_too_large,
)
from lineage.graph.drift import DriftRecord
from lineage.graph.memory_edges import Edge, Validity
from lineage.graph.memory_index import Timeline, Turns
from lineage.graph.memory_runs import MemoryRuns
from lineage.graph.topology import (
    EDGE_ENDS,
    SEARCHABLE,
    Change,
    GraphEdge,
    Incidence,
    Node,
    node_id,
    search_rank,
    split_id,
    steps,
)


class InMemoryGraph(MemoryRuns):
    def __init__(self, max_events: int = 200_000, max_runs: int = 10_000) -> None:
        self._features: dict[str, FeatureInfo] = {}
        super().__init__(max_runs)
        self._turns = Turns()
        self._served: defaultdict[str, dict[str, ServedBy]] = defaultdict(dict)  # feature -> server ->
        self._max_events = max_events
        self._event_keys: set[str] = set()
        # (key, feature, time, tie), the oldest received first
        self._event_order: deque[tuple[str, str, int, str]] = deque()
        self._events: defaultdict[str, Timeline[LineageEvent]] = defaultdict(Timeline)  # by time, server
        self._applied: dict[str, int] = {}  # project -> newest registry version applied
        self._drift: defaultdict[str, dict[str, DriftRecord]] = defaultdict(dict)  # feature -> key ->
        self._drift_times: defaultdict[str, Timeline[DriftRecord]] = defaultdict(Timeline)  # by time, server
        # (feature, record), the oldest received first: at most max_events records in all, as
        # events (per feature they were 200,000 each, ~94 MB a drifting feature: review s56 r3)
        self._drift_order: deque[tuple[str, DriftRecord]] = deque()
        self._drift_count = 0
        self._described: dict[
            tuple[str, str], tuple[str, str]
        ] = {}  # (view|service, name) -> owner, description
        self._first_served: dict[tuple[str, str], int] = {}  # (feature, server) -> first window, ms
        self._servers: defaultdict[str, set[str]] = defaultdict(set)  # server -> features it served

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def ping(self) -> None:
        return None

    # -- writes ----------------------------------------------------------------------

    async def apply_definitions(self, facts: DefinitionFacts) -> bool:
        if self._applied.get(facts.project, 0) >= facts.registry_version:
            return False
        self._applied[facts.project] = facts.registry_version
        t = facts.valid_from_ms
        self._described.update({(k, n): (owner, text) for k, n, owner, text in facts.described})
        for f in facts.features:
            old = self._features.get(f.id)
            versions = tuple(sorted(set(old.versions if old else ()) | {f.version}))
            self._features[f.id] = replace(
                f, version=max(f.version, old.version if old else 0), versions=versions
            )
        wanted: dict[Edge, str] = {}
        wanted.update({("CONTAINS", v, fid): "" for v, fid in facts.contains})
        wanted.update({("USES", s, fid): "" for s, fid in facts.uses})
        wanted.update({("DERIVED_FROM", a, b): "" for a, b in facts.derived_from})
        wanted.update({("PRODUCED_BY", fid, table): role for fid, table, role in facts.produced_by})
        self._tables.update(table for _, table, _ in facts.produced_by)
        for edge, role in wanted.items():
            current = self._edges.get(edge)
            if current is None or current.valid_to is not None:
                self._add_edge(edge, Validity(t, None, role, facts.project))
            else:
                current.project = facts.project  # still wanted: the applying project owns it now
        # Edges of this project's earlier definitions that this snapshot no longer has
        # end now. Other projects' edges are not this snapshot's to judge, and online
        # PRODUCED_BY edges come from serving, not definitions.
        for edge, v in self._edges.items():
            if (
                v.valid_to is None
                and v.project == facts.project
                and edge not in wanted
                and v.role != "online"
            ):
                v.valid_to = t
        return True

    async def write_events(self, events: Sequence[LineageEvent]) -> None:
        times = [event_time_ms(e) for e in events]  # all or nothing: a bad one fails before any write
        for e, ts in zip(events, times, strict=True):
            key = event_key(e)
            fresh = key not in self._event_keys
            if fresh:
                self._remember(key, e.feature_id, ts, e)
            old = self._features.get(e.feature_id)
            view = e.feature_id.partition(":")[0]
            versions = tuple(sorted(set(old.versions if old else ()) | {e.feature_version}))
            version = max(e.feature_version, old.version if old else 0)
            self._features[e.feature_id] = (
                replace(old, version=version, versions=versions)
                if old
                else FeatureInfo(e.feature_id, view, "", version, versions)
            )
            self._tables.add(e.source_table)
            edge = ("PRODUCED_BY", e.feature_id, e.source_table)
            if edge not in self._edges:
                self._add_edge(edge, Validity(ts, None, "online"))
            by_server = self._served[e.feature_id]
            served = by_server.get(e.service)
            count = (served.count if served else 0) + (e.served_count if fresh else 0)
            last = max(ts, served.last_seen_ms if served else 0)
            by_server[e.service] = ServedBy(e.service, count, last)
            self._servers[e.service].add(e.feature_id)
            first = self._first_served.get((e.feature_id, e.service))
            self._first_served[(e.feature_id, e.service)] = ts if first is None else min(first, ts)

    def _remember(self, key: str, feature_id: str, ts: int, e: LineageEvent) -> None:
        if len(self._event_order) >= self._max_events:
            old_key, old_feature, old_ts, old_tie = self._event_order.popleft()
            self._event_keys.discard(old_key)
            timeline = self._events[old_feature]
            timeline.remove(old_ts, old_tie)
            if not len(timeline):  # a feature no longer served keeps nothing (review s56 r2 #1)
                del self._events[old_feature]
        tie = f"{e.service}\n{key}"  # by time, then server (as Bolt's ORDER BY)
        self._event_keys.add(key)
        self._event_order.append((key, feature_id, ts, tie))
        self._events[feature_id].add(ts, tie, e)

    # -- reads -----------------------------------------------------------------------

    async def feature(self, feature_id: str, as_of_ms: int | None = None) -> FeatureInfo | None:
        await self._turns.wait()
        f = self._features.get(feature_id)
        if f is None or (as_of_ms is not None and not self._in("CONTAINS", feature_id, as_of_ms)):
            return None
        return f

    async def upstream(self, feature_id: str, depth: int, as_of_ms: int | None = None) -> list[str]:
        await self._turns.wait()
        return sorted(self._walk(feature_id, [feature_id], depth, "out", as_of_ms))

    async def downstream(self, feature_id: str, depth: int, as_of_ms: int | None = None) -> list[str]:
        await self._turns.wait()
        return sorted(self._walk(feature_id, [feature_id], depth, "in", as_of_ms))

    async def produced_by(self, feature_id: str, as_of_ms: int | None = None) -> list[TableRef]:
        await self._turns.wait()
        refs = [
            TableRef(b, self._edges[("PRODUCED_BY", feature_id, b)].role)
            for b in self._out("PRODUCED_BY", feature_id, as_of_ms)
        ]
        return sorted(refs, key=lambda t: (t.role, t.name))

    async def served_by(
        self, feature_id: str, since_ms: int | None = None, limit: int = MAX_SERVED
    ) -> list[ServedBy]:
        await self._turns.wait()
        rows = self._served.get(feature_id, {}).values()
        kept = [s for s in rows if since_ms is None or s.last_seen_ms >= since_ms]
        return heapq.nsmallest(limit, kept, key=lambda s: (-s.last_seen_ms, s.server))

    async def services_using(self, feature_id: str, as_of_ms: int | None = None) -> list[str]:
        await self._turns.wait()
        return self._in("USES", feature_id, as_of_ms)

    async def table_exists(self, name: str) -> bool:
        await self._turns.wait()
        return name in self._tables

    async def table_features(self, name: str, as_of_ms: int | None = None) -> list[str]:
        await self._turns.wait()
        return self._in("PRODUCED_BY", name, as_of_ms)

    async def impact(self, table: str, depth: int, as_of_ms: int | None = None) -> Impact:
        await self._turns.wait()
        direct = self._in("PRODUCED_BY", table, as_of_ms)
        if len(direct) > MAX_WALK:
            raise table_too_large(table)
        name = f"the features of {table}"
        features = set(direct) | self._walk(name, direct, depth, "in", as_of_ms, MAX_WALK - len(direct))
        services = {s for f in features for s in self._in("USES", f, as_of_ms)}
        return Impact(tuple(sorted(features)), tuple(sorted(services)))

    async def events(
        self, feature_id: str, since_ms: int | None, until_ms: int | None, limit: int
    ) -> list[LineageEvent]:
        await self._turns.wait()
        # By the time, not its text: "...07.500Z" sorts before "...07Z" as a string.
        timeline = self._events.get(feature_id)
        return timeline.last(since_ms, until_ms, limit) if timeline is not None else []

    async def add_drift(self, records: Sequence[DriftRecord]) -> None:
        for r in records:
            kept, times = self._drift[r.feature_id], self._drift_times[r.feature_id]
            old = kept.pop(r.key, None)
            if old is not None:  # (its entry in the order goes stale: skipped when it comes up)
                times.remove(old.at_ms, f"{old.server}\n{old.key}")
                self._drift_count -= 1
            kept[r.key] = r
            times.add(r.at_ms, f"{r.server}\n{r.key}", r)
            self._drift_order.append((r.feature_id, r))
            self._drift_count += 1
            while self._drift_count > self._max_events:  # bounded like the events: oldest first out
                self._forget_oldest_drift()
            if len(self._drift_order) > 2 * self._drift_count + 64:  # stale entries of replaced records
                self._drift_order = deque(e for e in self._drift_order if self._kept_drift(*e))

    def _kept_drift(self, feature: str, record: DriftRecord) -> bool:
        """Whether ``record`` is still kept (not replaced). A plain lookup: indexing the
        defaultdict would keep an empty entry for a feature whose records are all gone."""
        kept = self._drift.get(feature)
        return kept is not None and kept.get(record.key) is record

    def _forget_oldest_drift(self) -> None:
        feature, first = self._drift_order.popleft()
        if not self._kept_drift(feature, first):
            return  # replaced since: its newer record has an entry of its own
        kept = self._drift[feature]
        del kept[first.key]
        times = self._drift_times[feature]
        times.remove(first.at_ms, f"{first.server}\n{first.key}")
        self._drift_count -= 1
        if not kept:
            del self._drift[feature], self._drift_times[feature]

    async def drift(
        self, feature_id: str, since_ms: int | None, until_ms: int | None, limit: int
    ) -> list[DriftRecord]:
        await self._turns.wait()
        times = self._drift_times.get(feature_id)
        return times.last(since_ms, until_ms, limit) if times is not None else []

    # -- topology and changes ------------------------------------------------------------

    def _exists(self, kind: str, name: str) -> bool:
        return {
            "feature": lambda: name in self._features,
            "view": lambda: (  # a view only a run's data version names is one, as on Bolt
                ("view", name) in self._described
                or bool(self._out_index.get(("CONTAINS", name)) or self._in_index.get(("OF", name)))
            ),
            "table": lambda: name in self._tables,
            "service": lambda: (
                ("service", name) in self._described or bool(self._out_index.get(("USES", name)))
            ),
            "server": lambda: name in self._servers,
            "run": lambda: name in self._runs,
            "data_version": lambda: name in self._data_versions,
        }[kind]()

    def _edge(self, kind: str, a: str, b: str) -> GraphEdge:
        src, dst = EDGE_ENDS[kind]
        at = self._edges[(kind, a, b)].valid_from if kind in describe.TIMED else 0
        return GraphEdge(node_id(src, a), node_id(dst, b), kind, at)

    async def incident(self, node_ids: Sequence[str], as_of_ms: int | None, upstream: bool) -> Incidence:
        """Every live edge (no ``totals``): the walk keeps MAX_NEIGHBOURS and counts the rest."""
        await self._turns.wait()
        out: list[GraphEdge] = []
        for nid in node_ids:
            kind, name = split_id(nid)
            for ek, is_source in steps(kind, upstream):
                if ek == "SERVED_BY":
                    out += self._served_edges(kind, name, as_of_ms)
                elif is_source:
                    out += self._newest([self._edge(ek, name, b) for b in self._out(ek, name, as_of_ms)])
                else:
                    out += self._newest([self._edge(ek, a, name) for a in self._in(ek, name, as_of_ms)])
        return Incidence(out)

    def _served_edges(self, kind: str, name: str, as_of_ms: int | None) -> list[GraphEdge]:
        served = (
            [(name, s) for s in self._served.get(name, {})]
            if kind == "feature"
            else [(f, name) for f in self._servers.get(name, ())]
        )
        return [  # timed by last_seen: a walk keeps a feature's MAX_SERVED newest (topology)
            GraphEdge(
                node_id("feature", f), node_id("server", s), "SERVED_BY", self._served[f][s].last_seen_ms
            )
            for f, s in served
            if as_of_ms is None or self._first_served.get((f, s), 0) <= as_of_ms
        ]

    def _node(self, kind: str, name: str) -> Node:
        if kind == "feature":
            return describe.feature_node(self._features[name])
        if kind == "run":
            return describe.run_node(self._runs[name])
        if kind == "data_version":
            return describe.data_version_node(self._data_versions[name])
        owner, text = self._described.get((kind, name), ("", ""))
        return describe.named_node(kind, name, owner, text)

    async def nodes(self, node_ids: Sequence[str]) -> list[Node]:
        await self._turns.wait()
        return [self._node(*split_id(n)) for n in node_ids if self._exists(*split_id(n))]

    async def search(self, text: str, limit: int) -> list[Node]:
        await self._turns.wait()
        names = {
            "feature": self._features,
            "view": {n for k, n in self._described if k == "view"}
            | {a for k, a in self._out_index if k == "CONTAINS"}
            | {b for (k, b), runs in self._in_index.items() if k == "OF" and runs},
            "table": self._tables,
            "service": {n for k, n in self._described if k == "service"}
            | {a for k, a in self._out_index if k == "USES"},
        }
        ranked = [
            (rank, kind, name)
            for kind in SEARCHABLE
            for name in names[kind]
            if (rank := search_rank(text, name, kind)) is not None
        ]
        return [self._node(kind, name) for _, kind, name in sorted(ranked)[:limit]]

    async def changes(
        self, feature_id: str | None, table: str | None, since_ms: int | None, limit: int
    ) -> list[Change]:
        await self._turns.wait()
        if feature_id is not None:
            features = [feature_id, *self._walk(feature_id, [feature_id], MAX_DEPTH, "out", None)]
            keys = {("view", f.partition(":")[0]) for f in features}
            keys |= {
                ("read", t)
                for f in features
                for t in self._out("PRODUCED_BY", f, None)
                if self._edges[("PRODUCED_BY", f, t)].role != "online"
            }
        else:
            keys = {("read", table or ""), ("wrote", table or "")}
        return [describe.change(r) for r in self._recent_runs(keys, since_ms, limit)]
