"""The graph around one node, for any node kind: ids, directions and the walk both
adapters share (each adapter only answers "which edges touch these nodes").

Node ids are ``kind:name``: ``feature:user_profile:age``, ``view:user_profile``,
``table:warehouse.users``, ``service:ranker_v1``, ``server:featurestore@host:8080``,
``run:<run id>``, ``data_version:user_profile@3``.

Direction follows the data: UPSTREAM walks towards where a node's data comes from
(feature -> its view, the tables it is produced by, the features it derives from; view ->
its latest data version -> the run that published it -> the tables that run read),
DOWNSTREAM towards where it goes (table -> features -> services and servers), BOTH is
the union of the two walks (never a walk that turns around). Edges are reported as
stored (``source -[kind]-> target``, docs/lineage.md's model).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

# kind of node -> (graph label, key property)
LABELS: dict[str, tuple[str, str]] = {
    "feature": ("Feature", "id"),
    "view": ("FeatureView", "name"),
    "table": ("Table", "name"),
    "service": ("FeatureService", "name"),
    "server": ("Server", "name"),
    "run": ("JobRun", "id"),
    "data_version": ("DataVersion", "id"),
}
# edge kind -> (kind of its source node, kind of its target node)
EDGE_ENDS: dict[str, tuple[str, str]] = {
    "CONTAINS": ("view", "feature"),
    "USES": ("service", "feature"),
    "DERIVED_FROM": ("feature", "feature"),
    "PRODUCED_BY": ("feature", "table"),
    "SERVED_BY": ("feature", "server"),
    "READ": ("run", "table"),
    "PUBLISHED": ("run", "data_version"),
    "OF": ("data_version", "view"),
}
# Edges along which data flows from source to target; on the others it flows target -> source.
FORWARD = frozenset({"CONTAINS", "SERVED_BY", "PUBLISHED", "OF"})
# Runs and data versions pile up with time: a walk keeps the newest few per node and edge kind.
RECENT = 3
# Servers a feature's ``served_by`` lists by default, and a walk keeps per feature: the most
# recently seen (a SERVED_BY edge's ``at_ms`` is its last_seen). Server names carry the host
# (a pod's name): each rollout of a fleet adds as many as it has workers, and none are
# pruned (docs/lineage.md, "Retention"): past 1,000 every graph of the feature was too large.
MAX_SERVED = 100
SEARCHABLE = ("feature", "view", "table", "service")


def node_id(kind: str, name: str) -> str:
    return f"{kind}:{name}"


def split_id(nid: str) -> tuple[str, str]:
    kind, _, name = nid.partition(":")
    if kind not in LABELS or not name:
        raise ValueError(f"node id {nid!r} is not 'kind:name' with kind one of {', '.join(LABELS)}")
    return kind, name


@dataclass(frozen=True, slots=True)
class Node:
    id: str
    kind: str
    label: str
    attributes: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)


@dataclass(frozen=True, slots=True)
class GraphEdge:
    source: str  # node ids
    target: str
    kind: str
    at_ms: int = field(default=0, compare=False)  # when it appeared (runs, data versions), else 0


@dataclass(frozen=True, slots=True)
class Topology:
    nodes: tuple[Node, ...]
    edges: tuple[GraphEdge, ...]


@dataclass(frozen=True, slots=True)
class Change:
    """Something that happened to data upstream of a feature or in a table: a run."""

    at_ms: int
    kind: str  # data_version | run_complete | run_failed | run_started
    job: str
    run_id: str
    rows: int
    data_version: str = ""  # "view@N" when the run published one


class TooLarge(ValueError):
    """The walk reached more nodes than a caller may receive."""


Incident = Callable[[Sequence[str], int | None, bool], Awaitable[list[GraphEdge]]]


def steps(kind: str, upstream: bool) -> list[tuple[str, bool]]:
    """The edges a walk follows from a node of ``kind``: (edge kind, whether the node is
    the edge's source). Upstream the node is where data arrives, downstream where it
    leaves: a server, say, is never walked through to the thousands of features it served."""
    out = []
    for ek, (src, dst) in EDGE_ENDS.items():
        forward = ek in FORWARD
        is_source = (not forward) if upstream else forward
        if (src if is_source else dst) == kind:
            out.append((ek, is_source))
    return out


def _upstream_of(edge: GraphEdge, nid: str) -> str | None:
    """The other end of ``edge`` when it lies upstream of ``nid``, else None."""
    if edge.kind in FORWARD:
        return edge.source if edge.target == nid else None
    return edge.target if edge.source == nid else None


def _downstream_of(edge: GraphEdge, nid: str) -> str | None:
    if edge.kind in FORWARD:
        return edge.target if edge.source == nid else None
    return edge.source if edge.target == nid else None


def _newest(steps: list[tuple[str, GraphEdge]]) -> list[tuple[str, GraphEdge]]:
    """One node's steps: every definition edge, and the RECENT newest timed ones per kind
    (MAX_SERVED of its servers)."""
    timed: dict[str, list[tuple[str, GraphEdge]]] = {}
    out = []
    for other, e in steps:
        if e.at_ms:
            timed.setdefault(e.kind, []).append((other, e))
        else:
            out.append((other, e))
    for kind, group in timed.items():
        # newest first, ties by the other end's id (as the Bolt adapter orders them)
        out += sorted(group, key=lambda s: (-s[1].at_ms, s[0]))[
            : MAX_SERVED if kind == "SERVED_BY" else RECENT
        ]
    return out


async def walk_one_way(
    root: str, upstream: bool, depth: int, as_of_ms: int | None, incident: Incident, max_nodes: int
) -> tuple[set[str], set[GraphEdge]]:
    side = _upstream_of if upstream else _downstream_of
    seen, edges = {root}, set()
    frontier = [root]
    for _ in range(depth):
        if not frontier:
            break
        by_node: dict[str, list[tuple[str, GraphEdge]]] = {n: [] for n in frontier}
        for e in await incident(frontier, as_of_ms, upstream):
            for n in (e.source, e.target):
                other = side(e, n) if n in by_node else None
                if other is not None:
                    by_node[n].append((other, e))
        nxt = []
        for steps in by_node.values():
            for other, e in _newest(steps):
                edges.add(e)
                if other not in seen:
                    seen.add(other)
                    nxt.append(other)
        if len(seen) > max_nodes or len(edges) > 10 * max_nodes:
            raise TooLarge(
                f"the graph around {root} has more than {max_nodes} nodes or {10 * max_nodes} edges: "
                "use a smaller depth"
            )
        frontier = nxt
    return seen, edges


async def walk(
    root: str, direction: str, depth: int, as_of_ms: int | None, incident: Incident, max_nodes: int
) -> tuple[set[str], set[GraphEdge]]:
    """Node ids and edges within ``depth`` steps of ``root`` (UPSTREAM, DOWNSTREAM or BOTH)."""
    nodes, edges = {root}, set()
    ways = {"UPSTREAM": (True,), "DOWNSTREAM": (False,), "BOTH": (True, False)}[direction]
    # both ways at once: a remote graph then answers two hops per round trip
    for n, e in await asyncio.gather(
        *(walk_one_way(root, up, depth, as_of_ms, incident, max_nodes) for up in ways)
    ):
        nodes |= n
        edges |= e
    if len(nodes) > max_nodes:
        raise TooLarge(f"the graph around {root} has more than {max_nodes} nodes: use a smaller depth")
    return nodes, edges


def search_rank(query: str, name: str, kind: str = "") -> tuple[int, str] | None:
    """Exact match first, then prefix, then substring (case-insensitive); None: no match.
    A feature (``kind`` "feature", ``name`` its id ``view:feature``) is ranked by the
    better of its id and its own name, so ``age`` is an exact match of ``user_profile:age``
    (review s58 #9: by the id alone it came after ``user_derived:engagement_score``)."""
    q, n = query.lower(), name.lower()
    names = (n, n.partition(":")[2]) if kind == "feature" else (n,)
    if q in names:
        return (0, name)
    if any(m.startswith(q) for m in names):
        return (1, name)
    if q in n:
        return (2, name)
    return None


Describe = Callable[[Sequence[str]], Awaitable[list[Node]]]


async def resolve(root: str, describe: Describe) -> Node | None:
    """``root`` as a node id (``kind:name``), or a bare name: a feature, a view, a table,
    then a service of that name."""
    kind = root.partition(":")[0]
    candidates = [root] if kind in LABELS else [node_id(k, root) for k in SEARCHABLE]
    found = {n.id: n for n in await describe(candidates)}
    return next((found[c] for c in candidates if c in found), None)


async def topology(
    root: Node,
    direction: str,
    depth: int,
    as_of_ms: int | None,
    incident: Incident,
    describe: Describe,
    max_nodes: int,
) -> Topology:
    ids, edges = await walk(root.id, direction, depth, as_of_ms, incident, max_nodes)
    nodes = {n.id: n for n in await describe(sorted(ids))}
    nodes[root.id] = root
    # an edge's far end may be a node only the edge names (a table known from one event)
    for nid in ids - nodes.keys():
        kind, name = split_id(nid)
        nodes[nid] = Node(nid, kind, name, {})
    ordered = sorted(edges, key=lambda e: (e.source, e.kind, e.target))
    return Topology(tuple(nodes[i] for i in sorted(nodes)), tuple(ordered))
