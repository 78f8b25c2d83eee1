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
# Edges that appear at a time of their own (a run's start, a publication): a walk keeps
# the newest RECENT of them per node.
TIMED = frozenset({"READ", "PUBLISHED", "OF"})
# Runs and data versions pile up with time: a walk keeps the newest few per node and edge kind.
RECENT = 3
# Servers a feature's ``served_by`` lists by default, and a walk keeps per feature: the most
# recently seen (a SERVED_BY edge's ``at_ms`` is its last_seen). Server names carry the host
# (a pod's name): each rollout of a fleet adds as many as it has workers, and none are
# pruned (docs/lineage.md, "Retention"): past 1,000 every graph of the feature was too large.
MAX_SERVED = 100
# The most neighbours a walk keeps per node, edge kind and direction, for every edge kind
# but the RECENT ones (a server's features, a view's, a table's, a service's; a feature's
# servers, MAX_SERVED): the rest are counted in the answer's ``truncated``, not drawn. A
# node has at most 6 such kinds a walk follows (a feature, both ways), so depth 1 is at
# most 601 nodes and always fits MAX_RESULTS (1,000): a table of 1,500 features had no
# graph at all, even at depth 1 (review s58 #4). 100 is what the page can still read.
MAX_NEIGHBOURS = MAX_SERVED
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
class Truncation:
    """Edges of one kind a walk left out at a node (it keeps MAX_NEIGHBOURS of them)."""

    node: str  # node id
    kind: str  # edge kind
    upstream: bool  # the walk's direction at the node
    kept: int
    dropped: int


@dataclass(frozen=True, slots=True)
class Incidence:
    """An ``incident`` answer: the edges, and for every (node, edge kind, upstream) of which
    the adapter sent only some, how many there are in all (a walk keeps MAX_NEIGHBOURS)."""

    edges: list[GraphEdge]
    totals: dict[tuple[str, str], int] = field(default_factory=dict)  # (node id, edge kind) ->


@dataclass(frozen=True, slots=True)
class Topology:
    nodes: tuple[Node, ...]
    edges: tuple[GraphEdge, ...]
    truncated: tuple[Truncation, ...] = ()


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


Incident = Callable[[Sequence[str], int | None, bool], Awaitable[Incidence]]


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


def _newest(
    nid: str, steps: list[tuple[str, GraphEdge]], totals: dict[tuple[str, str], int], upstream: bool
) -> tuple[list[tuple[str, GraphEdge]], list[Truncation]]:
    """One node's steps: the RECENT newest of each TIMED kind, and MAX_NEIGHBOURS of every
    other kind (the most recently seen servers, else by the other end's id, as the Bolt
    adapter orders them), with a Truncation for each kind cut (``totals``: how many the
    adapter had when it sent only some)."""
    by_kind: dict[str, list[tuple[str, GraphEdge]]] = {}
    for other, e in steps:
        by_kind.setdefault(e.kind, []).append((other, e))
    out: list[tuple[str, GraphEdge]] = []
    cut: list[Truncation] = []
    for kind, group in by_kind.items():
        keep = RECENT if kind in TIMED else MAX_NEIGHBOURS
        out += sorted(group, key=lambda s: (-s[1].at_ms, s[0]))[:keep]
        total = max(len(group), totals.get((nid, kind), 0))
        if kind not in TIMED and total > keep:
            cut.append(Truncation(nid, kind, upstream, keep, total - keep))
    return out, cut


async def walk_one_way(
    root: str, upstream: bool, depth: int, as_of_ms: int | None, incident: Incident, max_nodes: int
) -> tuple[set[str], set[GraphEdge], list[Truncation]]:
    side = _upstream_of if upstream else _downstream_of
    seen, edges = {root}, set()
    cut: list[Truncation] = []
    frontier = [root]
    for hop in range(depth):
        if not frontier:
            break
        by_node: dict[str, list[tuple[str, GraphEdge]]] = {n: [] for n in frontier}
        found = await incident(frontier, as_of_ms, upstream)
        for e in found.edges:
            for n in (e.source, e.target):
                other = side(e, n) if n in by_node else None
                if other is not None:
                    by_node[n].append((other, e))
        nxt = []
        for n, steps in by_node.items():
            kept, dropped = _newest(n, steps, found.totals, upstream)
            cut += dropped
            for other, e in kept:
                edges.add(e)
                if other not in seen:
                    seen.add(other)
                    nxt.append(other)
        if len(seen) > max_nodes or len(edges) > 10 * max_nodes:
            raise too_large(root, hop + 1, f"more than {max_nodes} nodes or {10 * max_nodes} edges")
        frontier = nxt
    return seen, edges, cut


def too_large(root: str, hops: int, what: str) -> TooLarge:
    """The walk reached ``what`` within ``hops``: a depth of ``hops - 1`` fits (depth 1
    always does, MAX_NEIGHBOURS)."""
    return TooLarge(
        f"the graph around {root} has {what} within {hops} hops: ask for depth {max(hops - 1, 1)} or less "
        f"(a walk draws at most {MAX_NEIGHBOURS} neighbours per node and edge kind, and counts the rest)"
    )


async def walk(
    root: str, direction: str, depth: int, as_of_ms: int | None, incident: Incident, max_nodes: int
) -> tuple[set[str], set[GraphEdge], list[Truncation]]:
    """Node ids and edges within ``depth`` steps of ``root`` (UPSTREAM, DOWNSTREAM or BOTH),
    and what the walk left out."""
    nodes, edges, cut = {root}, set(), []
    ways = {"UPSTREAM": (True,), "DOWNSTREAM": (False,), "BOTH": (True, False)}[direction]
    # both ways at once: a remote graph then answers two hops per round trip
    for n, e, c in await asyncio.gather(
        *(walk_one_way(root, up, depth, as_of_ms, incident, max_nodes) for up in ways)
    ):
        nodes |= n
        edges |= e
        cut += c
    if len(nodes) > max_nodes:
        raise too_large(root, depth, f"more than {max_nodes} nodes")
    return nodes, edges, cut


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
    ids, edges, cut = await walk(root.id, direction, depth, as_of_ms, incident, max_nodes)
    nodes = {n.id: n for n in await describe(sorted(ids))}
    nodes[root.id] = root
    # an edge's far end may be a node only the edge names (a table known from one event)
    for nid in ids - nodes.keys():
        kind, name = split_id(nid)
        nodes[nid] = Node(nid, kind, name, {})
    ordered = sorted(edges, key=lambda e: (e.source, e.kind, e.target))
    truncated = sorted(cut, key=lambda t: (t.node, t.kind, t.upstream))
    return Topology(tuple(nodes[i] for i in sorted(nodes)), tuple(ordered), tuple(truncated))
