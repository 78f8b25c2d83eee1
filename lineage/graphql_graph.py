"""GraphQL for the lineage page: the graph around any node, search, and what changed.

    graph(root: ID!, direction: UPSTREAM|DOWNSTREAM|BOTH, depth: Int, asOf: DateTime)
        { root nodes { id kind label attributes } edges { source target kind }
          truncated { node kind direction kept dropped } }
    search(text: String!, limit: Int) { id kind label attributes }
    node(id: ID!) { id kind label attributes }
    feature(id) { changes(since, limit) { at kind dataVersion job runId rows } }   (and table)

The walk asks the graph once per hop and node kind (charged to the request's budget
before it asks), and the answer costs one per node and edge. A walk keeps at most
MAX_NEIGHBOURS neighbours per node and edge kind, and ``truncated`` counts the rest, so
depth 1 always fits; more than MAX_RESULTS nodes is an error naming a depth that fits.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import Enum
from typing import Annotated

import strawberry
from graphql import GraphQLError
from strawberry import ID
from strawberry.scalars import JSON
from strawberry.types import Info

from lineage.graph.base import MAX_DEPTH, LineageGraph
from lineage.graph.topology import (
    LABELS,
    GraphEdge,
    Incidence,
    TooLarge,
    Truncation,
    resolve,
    split_id,
    topology,
)
from lineage.graph.topology import Change as ChangeFact
from lineage.graph.topology import Node as NodeFact
from lineage.graphql_budget import MAX_RESULTS, _bounded, _charge, _depth, _graph, _ms, _walked
from lineage.graphql_scalars import Long

# A search scans every name (the memory graph: 16 ms on the 10,000-feature graph of
# benchmarks/lineage_page.py), not one lookup: at this cost a request gets 9 of them
# (150 ms of one event loop), where at 4 it got as many as the alias limit allows (30, 0.5 s).
SEARCH_COST = 1000


@strawberry.enum(
    description="Which way to walk from the root: towards the data's sources, its uses, or both."
)
class Direction(Enum):
    UPSTREAM = "UPSTREAM"
    DOWNSTREAM = "DOWNSTREAM"
    BOTH = "BOTH"


@strawberry.type(description="A node: feature, view, table, service, server, run or data_version.")
class Node:
    id: ID = strawberry.field(description="'kind:name', e.g. 'feature:user_profile:age'.")
    kind: str
    label: str
    attributes: JSON

    @staticmethod
    def of(n: NodeFact) -> Node:
        return Node(id=ID(n.id), kind=n.kind, label=n.label, attributes=JSON(n.attributes))


@strawberry.type(description="An edge as stored: source -[kind]-> target.")
class Edge:
    source: ID
    target: ID
    kind: str

    @staticmethod
    def of(e: GraphEdge) -> Edge:
        return Edge(source=ID(e.source), target=ID(e.target), kind=e.kind)


@strawberry.type(
    description="Edges of one kind the walk left out at a node: it draws at most 100 per node, "
    "edge kind and direction (the most recently seen servers, else by name)."
)
class Truncated:
    node: ID
    kind: str = strawberry.field(description="The edge kind, e.g. CONTAINS, SERVED_BY.")
    direction: Direction = strawberry.field(description="The walk's direction at the node.")
    kept: int = strawberry.field(description="Edges of this kind drawn at the node.")
    dropped: int = strawberry.field(description="Edges of this kind at the node not drawn.")

    @staticmethod
    def of(t: Truncation) -> Truncated:
        way = Direction.UPSTREAM if t.upstream else Direction.DOWNSTREAM
        return Truncated(node=ID(t.node), kind=t.kind, direction=way, kept=t.kept, dropped=t.dropped)


@strawberry.type(description="The graph around a node.")
class Graph:
    root: ID = strawberry.field(
        description="The node it is drawn around: `root` as asked, or the node a bare name "
        "resolved to (a feature, view, table, then a service of that name)."
    )
    nodes: list[Node]
    edges: list[Edge]
    truncated: list[Truncated] = strawberry.field(
        description="Where the walk drew only some of a node's edges of one kind, and how many it left out."
    )


@strawberry.type(description="A job run that changed data: what it published or why it failed.")
class Change:
    at: datetime
    kind: str = strawberry.field(description="data_version | run_complete | run_failed | run_started")
    data_version: str | None
    job: str
    run_id: str
    rows: Long

    @staticmethod
    def of(c: ChangeFact) -> Change:
        return Change(
            at=datetime.fromtimestamp(c.at_ms / 1000, UTC),
            kind=c.kind,
            data_version=c.data_version or None,
            job=c.job,
            run_id=c.run_id,
            rows=Long(c.rows),
        )


async def changes(
    info: Info, feature_id: str | None, table: str | None, since: datetime | None, limit: int
) -> list[Change]:
    if not 1 <= limit <= MAX_RESULTS:
        raise GraphQLError(f"limit must be between 1 and {MAX_RESULTS}, got {limit}")
    if not _charge(info, MAX_DEPTH + 2):  # the upstream walk (a lookup per hop), its tables, the runs
        return []
    found = await _walked(_graph(info).changes(feature_id, table, _ms(since), limit))
    return [Change.of(c) for c in found] if _charge(info, len(found)) else []


def _counting(info: Info, graph: LineageGraph) -> tuple:  # type: ignore[type-arg]
    """The graph's incident/nodes calls, each charged to the budget before it runs."""

    async def incident(ids, as_of, upstream):  # type: ignore[no-untyped-def]
        if not _charge(info, len({i.partition(":")[0] for i in ids})):  # a match per node kind
            return Incidence([])
        return await graph.incident(ids, as_of, upstream)

    async def nodes(ids):  # type: ignore[no-untyped-def]
        if not _charge(info, len({i.partition(":")[0] for i in ids})):
            return []
        return await graph.nodes(ids)

    return incident, nodes


async def _existed(node_id: str, as_of_ms: int | None, incident) -> bool:  # type: ignore[no-untyped-def]
    """Whether the node had an edge either way at ``as_of_ms`` (a walk of one direction
    may find none from a node that was there: a service downstream)."""
    return bool(
        (await incident([node_id], as_of_ms, True)).edges
        or (await incident([node_id], as_of_ms, False)).edges
    )


@strawberry.type
class GraphQueries:
    @strawberry.field(
        description="The graph around `root` (a node id 'kind:name', or a feature, view, table or "
        "service name), `depth` 1..5 hops, as it was at `asOf` (default: now). Null when no such node."
    )
    async def graph(
        self,
        info: Info,
        start: Annotated[ID, strawberry.argument(name="root")],
        direction: Direction = Direction.BOTH,
        depth: int = 2,
        as_of: datetime | None = None,
    ) -> Graph | None:
        root = str(start)
        kind, _, name = root.partition(":")
        if not root.strip() or (kind in LABELS and not name):
            raise GraphQLError(
                f"root {root!r} names no node: give 'kind:name' or a feature, view, table or service name"
            )
        incident, nodes = _counting(info, _graph(info))
        node = await resolve(root, nodes)
        if node is None:
            return None
        try:
            topo = await topology(
                node, direction.value, _depth(depth), _ms(as_of), incident, nodes, MAX_RESULTS
            )
        except TooLarge as e:
            raise GraphQLError(str(e)) from None
        if as_of is not None and not topo.edges and not await _existed(node.id, _ms(as_of), incident):
            return None  # as `feature(asOf)`: a node without any edge then did not exist then
        if not _charge(info, len(topo.nodes) + len(topo.edges) + len(topo.truncated)):
            return None
        return Graph(
            root=ID(node.id),
            nodes=[Node.of(n) for n in topo.nodes],
            edges=[Edge.of(e) for e in topo.edges],
            truncated=[Truncated.of(t) for t in topo.truncated],
        )

    @strawberry.field(description="Features, views, tables and services whose name contains `text`.")
    async def search(self, info: Info, text: str, limit: int = 20) -> list[Node]:
        if not 1 <= limit <= 100:
            raise GraphQLError(f"limit must be between 1 and 100, got {limit}")
        if not text.strip() or not _charge(info, SEARCH_COST):
            return []
        found = await _graph(info).search(text.strip(), limit)
        return [Node.of(n) for n in found] if _charge(info, len(found)) else []

    @strawberry.field(description="One node by id ('kind:name'), with its attributes.")
    async def node(self, info: Info, id: ID) -> Node | None:
        try:
            split_id(str(id))  # a caller's mistake, not a graph failure: no traceback at ERROR
        except ValueError as e:
            raise GraphQLError(str(e)) from None
        if not _charge(info, 1):
            return None
        found = await _graph(info).nodes([str(id)])
        return Node.of(found[0]) if found else None


__all__ = ["Change", "Direction", "GraphQueries", "_bounded", "changes"]
