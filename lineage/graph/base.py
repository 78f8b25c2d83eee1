"""The lineage graph port, and how definitions and events become graph facts.

Model (docs/lineage.md):

    (:FeatureView {name})-[:CONTAINS]->(:Feature {id, view, dtype, version, versions})
    (:FeatureService {name})-[:USES]->(:Feature)
    (:Feature)-[:DERIVED_FROM]->(:Feature)
    (:Feature)-[:PRODUCED_BY {role: online|batch|upstream}]->(:Table {name})
    (:Feature)-[:SERVED_BY {count, last_seen}]->(:Server {name})
    (:LineageEvent {key, feature_id, ...})                  one per event, for lineageEvents

Definition edges carry ``valid_from``/``valid_to`` (epoch ms) and the ``project`` whose
definitions opened them: applying a project's snapshot opens the edges it has and closes
that project's edges it no longer has (never another project's), so lineage can be asked
"as of" any past time. Every write is idempotent: replaying events never duplicates a node,
an edge or a count (a SERVED_BY count grows only when its event node is new).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from featurestore.definitions.snapshot import RegistrySnapshot
from featurestore.model import REQUEST_PREFIX, parse_feature_ref
from lineage.events import LineageEvent, canonical_time, parse_timestamp
from lineage.graph.drift import DriftRecord
from lineage.graph.topology import MAX_NEIGHBOURS, Change, Incidence, Node, TooLarge
from lineage.graph.topology import MAX_SERVED as MAX_SERVED  # re-exported
from lineage.runs import JobRunEvent

MAX_DEPTH = 5
# A walk (upstream, downstream, impact, the upstream of `changes`) stops with TooLarge
# when it reaches more features than a GraphQL answer may list (MAX_RESULTS there), so a
# hop never asks the graph about more than this many features. The in-process graph also
# stops after examining MAX_WALK_STEPS DERIVED_FROM edges (closed ones and edges back to
# features already reached included): a walk runs on the serving event loop, and a step
# costs 0.05-0.3 µs (7,550 steps of a 5 x 50 fully connected layered graph: 0.4 ms), so a
# walk holds the loop a few ms at most; ten edges per feature reached, as topology.walk allows.
MAX_WALK = 1000
MAX_WALK_STEPS = 10 * MAX_WALK


def walk_too_large(start: str, depth: int, steps: bool = False) -> TooLarge:
    """The error of a walk stopped at MAX_WALK features (or, ``steps``, MAX_WALK_STEPS edges),
    naming what fits: a smaller depth, and at depth 1 (none smaller) the graph query, which
    draws MAX_NEIGHBOURS per node and counts the rest."""
    reached = (
        f"examines more than {MAX_WALK_STEPS} edges" if steps else f"reaches more than {MAX_WALK} features"
    )
    fix = (
        "ask for a smaller depth"
        if depth > 1
        else f"too many to list; graph(root, depth: 1) draws the first {MAX_NEIGHBOURS} and counts the rest"
    )
    return TooLarge(f"the walk from {start} {reached} within {depth} hops: {fix}")


def table_too_large(table: str) -> TooLarge:
    """The error of ``impact`` on a table of more than MAX_WALK features, naming what fits."""
    return TooLarge(
        f"table {table} produces more than {MAX_WALK} features, more than impact walks from: page "
        "through table.features(limit, offset) and ask each one's downstream, or draw "
        f'graph(root: "table:{table}", direction: DOWNSTREAM) ({MAX_NEIGHBOURS} per node and the count of the rest)'
    )


class GraphUnavailable(Exception):
    """The graph cannot take the request now (down, unreachable, overloaded, refusing
    our credentials, or conflicting writes that kept failing): the same request can
    succeed later. Any other exception from a write means the graph refused that
    write itself (e.g. a value it cannot store), so retrying it can never succeed."""


@dataclass(frozen=True, slots=True)
class FeatureInfo:
    id: str
    view: str
    dtype: str
    version: int
    versions: tuple[int, ...]
    owner: str = ""  # the view's
    description: str = ""


@dataclass(frozen=True, slots=True)
class TableRef:
    name: str
    role: str  # online | batch | upstream


@dataclass(frozen=True, slots=True)
class ServedBy:
    server: str
    count: int
    last_seen_ms: int


@dataclass(frozen=True, slots=True)
class Impact:
    features: tuple[str, ...]
    feature_services: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class DefinitionFacts:
    """What one snapshot says about the graph (edges as (from, to) pairs)."""

    project: str
    valid_from_ms: int
    registry_version: int
    views: tuple[str, ...]
    services: tuple[str, ...]
    features: tuple[FeatureInfo, ...]
    contains: tuple[tuple[str, str], ...]  # view -> feature id
    uses: tuple[tuple[str, str], ...]  # service -> feature id
    derived_from: tuple[tuple[str, str], ...]  # feature id -> feature id
    produced_by: tuple[tuple[str, str, str], ...] = field(default=())  # feature id, table, role
    described: tuple[tuple[str, str, str, str], ...] = field(default=())  # kind, name, owner, description


def definition_facts(snapshot: RegistrySnapshot) -> DefinitionFacts:
    d = snapshot.definitions
    created = snapshot.created_at.rstrip("Z")
    valid_from = int(datetime.fromisoformat(created + "+00:00").timestamp() * 1000) if created else 0
    features, contains, derived, produced = [], [], [], []
    described = [("view", v.name, v.owner, v.description) for v in d.views.values()]
    described += [("view", v.name, v.owner, v.description) for v in d.derived_views.values()]
    described += [("service", s.name, s.owner, s.description) for s in d.services.values()]
    for view in d.views.values():
        tables = [dep for dep in view.upstream if parse_feature_ref(dep) is None or "://" in dep]
        refs = [dep for dep in view.upstream if parse_feature_ref(dep) is not None and "://" not in dep]
        for f in view.features:
            fid = f"{view.name}:{f.name}"
            version = snapshot.feature_versions.get(fid, snapshot.version)
            features.append(
                FeatureInfo(fid, view.name, f.dtype.value, version, (version,), view.owner, f.description)
            )
            contains.append((view.name, fid))
            derived += [(fid, ref) for ref in refs]
            produced += [(fid, t, "upstream") for t in tables]
            if view.batch_source is not None:
                produced.append((fid, view.batch_source.uri, "batch"))
    for dview in d.derived_views.values():  # computed in the join: DERIVED_FROM their inputs
        for df in dview.features:
            fid = f"{dview.name}:{df.name}"
            version = snapshot.feature_versions.get(fid, snapshot.version)
            features.append(
                FeatureInfo(fid, dview.name, df.dtype.value, version, (version,), dview.owner, df.description)
            )
            contains.append((dview.name, fid))
            derived += [(fid, dep) for dep in df.depends_on if not dep.startswith(REQUEST_PREFIX)]
    uses = [(s.name, str(r)) for s in d.services.values() for r in s.features]
    return DefinitionFacts(
        project=d.project,
        valid_from_ms=valid_from,
        registry_version=snapshot.version,
        views=tuple(sorted([*d.views, *d.derived_views])),
        services=tuple(sorted(d.services)),
        features=tuple(features),
        contains=tuple(contains),
        uses=tuple(uses),
        derived_from=tuple(derived),
        produced_by=tuple(produced),
        described=tuple(described),
    )


def event_key(e: LineageEvent) -> str:
    """Identity of an event: the same window of the same feature version served by the
    same snapshot on the same server is the same event, however often it is delivered (a
    canary's window has one per snapshot). The window is its instant, however its
    timestamp is spelled (``canonical_time``: the built-in emitter's spelling, so keys
    of events it stored before are unchanged; docs/lineage.md "Consumer")."""
    window = canonical_time(e.timestamp)
    return f"{e.feature_id}|{e.feature_version}|{e.registry_version}|{window}|{e.service}"


def event_time_ms(e: LineageEvent) -> int:
    return int(parse_timestamp(e.timestamp).timestamp() * 1000)


class LineageGraph(Protocol):
    """Implementations: lineage.graph.memory (embedded), lineage.graph.bolt (Neo4j over
    Bolt). Both pass tests/contract/test_lineage_graph.py."""

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def ping(self) -> None:
        """Raise unless the graph takes a write now (Bolt: one probe node, MERGEd in
        place): tells a refused event from a graph in trouble, including one that
        answers reads but refuses writes (read-only, disk full, a reader role)."""
        ...

    async def apply_definitions(self, facts: DefinitionFacts) -> bool:
        """Record a snapshot's definitions, unless the graph already holds those of the
        same or a newer registry version (writers may lag); True when applied."""
        ...

    async def write_events(self, events: Sequence[LineageEvent]) -> None:
        """Write all the events or none. Raises GraphUnavailable when the graph cannot
        take them now; any other exception means it refuses one of them for good."""
        ...

    async def feature(self, feature_id: str, as_of_ms: int | None = None) -> FeatureInfo | None: ...

    async def upstream(self, feature_id: str, depth: int, as_of_ms: int | None = None) -> list[str]:
        """Features it derives from within ``depth`` hops; TooLarge beyond MAX_WALK of them."""
        ...

    async def downstream(self, feature_id: str, depth: int, as_of_ms: int | None = None) -> list[str]:
        """Features derived from it within ``depth`` hops; TooLarge beyond MAX_WALK of them."""
        ...

    async def produced_by(self, feature_id: str, as_of_ms: int | None = None) -> list[TableRef]: ...

    async def served_by(
        self, feature_id: str, since_ms: int | None = None, limit: int = MAX_SERVED
    ) -> list[ServedBy]:
        """The servers that served a feature (seen at or after ``since_ms``), the most
        recently seen first, at most ``limit``: a fleet's rollouts add server names
        (pod names) that are never pruned, and the answer must stay bounded."""
        ...

    async def services_using(self, feature_id: str, as_of_ms: int | None = None) -> list[str]: ...

    async def table_exists(self, name: str) -> bool: ...

    async def table_features(self, name: str, as_of_ms: int | None = None) -> list[str]: ...

    async def impact(self, table: str, depth: int, as_of_ms: int | None = None) -> Impact:
        """The table's features and those derived from them within ``depth`` hops (one walk
        from all of them), and the services using any; TooLarge beyond MAX_WALK features."""
        ...

    async def events(
        self, feature_id: str, since_ms: int | None, until_ms: int | None, limit: int
    ) -> list[LineageEvent]: ...

    # drift records (lineage/graph/drift.py)

    async def add_drift(self, records: Sequence[DriftRecord]) -> None:
        """Write drift records (idempotent by feature, time and server)."""
        ...

    async def drift(
        self, feature_id: str, since_ms: int | None, until_ms: int | None, limit: int
    ) -> list[DriftRecord]:
        """A feature's drift records in [since, until), oldest first, the newest ``limit``."""

    async def write_runs(self, runs: Sequence[JobRunEvent]) -> None:
        """Record job run reports (idempotent per run id: a START after its COMPLETE or
        FAIL changes nothing). Errors as for ``write_events``."""
        ...

    async def incident(self, node_ids: Sequence[str], as_of_ms: int | None, upstream: bool) -> Incidence:
        """The edges an upstream (or downstream) walk follows from the nodes (ids
        ``kind:name``; ``topology.steps``), live at ``as_of_ms`` (None: now); runs and
        data versions count from their start / publication. An adapter may send only the
        walk's share of a node's edges of one kind (the RECENT newest TIMED ones; for the
        others MAX_NEIGHBOURS, the most recently seen servers, else by the other end's id),
        with how many there are in ``totals`` so the walk can say what it left out."""
        ...

    async def nodes(self, node_ids: Sequence[str]) -> list[Node]:
        """The nodes that exist among ``node_ids``, with their attributes."""
        ...

    async def search(self, text: str, limit: int) -> list[Node]:
        """Features, views, tables and services whose name contains ``text``."""
        ...

    async def changes(
        self, feature_id: str | None, table: str | None, since_ms: int | None, limit: int
    ) -> list[Change]:
        """Runs upstream of a feature (its view and the views of the features it derives
        from, up to MAX_DEPTH hops, and the tables they read), or that read or wrote a
        table, that started or ended at ``since_ms`` or later; newest first."""
        ...
