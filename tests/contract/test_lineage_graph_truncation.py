"""The LineageGraph contract, continued: a node with more neighbours than a walk draws
(review s58 #4, #6). A table, view or service of more than 1,000 features had no graph at
all, even at depth 1, and a server's graph showed 100 of the features it served with no
sign of the rest. Both graphs now keep MAX_NEIGHBOURS per node and edge kind and count
the rest in ``truncated``. The fixtures are test_lineage_graph.py's."""

from __future__ import annotations

import pytest

from lineage.graph.base import MAX_WALK, DefinitionFacts, FeatureInfo, LineageGraph, walk_too_large
from lineage.graph.topology import MAX_NEIGHBOURS, TooLarge, Topology, Truncation, resolve, topology
from tests.contract import test_lineage_graph as contract
from tests.contract.test_lineage_graph import event

graph = contract.graph  # the fixture: the in-process graph and Bolt (ArcadeDB)

WIDE = 1_500  # features of view `wide`, all produced by warehouse.wide and used by bigsvc


def wide() -> DefinitionFacts:
    ids = [f"wide:f{i:04d}" for i in range(WIDE)]
    return DefinitionFacts(
        project="p", valid_from_ms=1, registry_version=1, views=("wide",), services=("bigsvc",),
        features=tuple(FeatureInfo(f, "wide", "float64", 1, (1,)) for f in ids),
        contains=tuple(("wide", f) for f in ids), uses=tuple(("bigsvc", f) for f in ids),
        derived_from=(), produced_by=tuple((f, "warehouse.wide", "batch") for f in ids),
    )  # fmt: skip


async def drawn(graph: LineageGraph, root: str, direction: str, depth: int = 1) -> Topology:
    node = await resolve(root, graph.nodes)
    assert node is not None, root
    return await topology(node, direction, depth, None, graph.incident, graph.nodes, MAX_WALK)


async def test_a_node_with_more_neighbours_than_a_walk_draws_is_drawn_in_part_with_the_rest_counted(
    graph: LineageGraph,
) -> None:
    await graph.apply_definitions(wide())
    first = {f"feature:wide:f{i:04d}" for i in range(MAX_NEIGHBOURS)}  # by id
    for root, direction, kind in [
        ("table:warehouse.wide", "DOWNSTREAM", "PRODUCED_BY"),
        ("service:bigsvc", "UPSTREAM", "USES"),
        ("view:wide", "DOWNSTREAM", "CONTAINS"),
    ]:
        topo = await drawn(graph, root, direction)
        assert {n.id for n in topo.nodes} == first | {root}, root
        assert topo.truncated == (
            Truncation(root, kind, direction == "UPSTREAM", MAX_NEIGHBOURS, WIDE - MAX_NEIGHBOURS),
        )
    # deeper, each of the features drawn has one service and one view: still drawn
    topo = await drawn(graph, "table:warehouse.wide", "DOWNSTREAM", 2)
    assert "service:bigsvc" in {n.id for n in topo.nodes}
    # a feature's own graph is whole: nothing left out
    topo = await drawn(graph, "feature:wide:f0007", "BOTH")
    assert topo.truncated == () and {"view:wide", "service:bigsvc"} <= {n.id for n in topo.nodes}


async def test_a_server_graph_draws_the_features_it_served_most_recently_and_counts_the_rest(
    graph: LineageGraph,
) -> None:
    await graph.apply_definitions(wide())
    served = MAX_NEIGHBOURS + 50
    await graph.write_events(
        [
            event(f"wide:f{i:04d}", f"2024-01-01T00:{i // 60:02d}:{i % 60:02d}Z", 1, "fs@pod")
            for i in range(served)
        ]
    )
    topo = await drawn(graph, "server:fs@pod", "UPSTREAM")
    newest = {f"feature:wide:f{i:04d}" for i in range(served - MAX_NEIGHBOURS, served)}
    assert {n.id for n in topo.nodes} == newest | {"server:fs@pod"}
    assert topo.truncated == (Truncation("server:fs@pod", "SERVED_BY", True, MAX_NEIGHBOURS, 50),)


async def test_a_walk_too_large_names_a_depth_that_fits_and_impact_names_the_pages_of_features(
    graph: LineageGraph,
) -> None:
    """The errors said "use a smaller depth" at depth 1 and "narrow the query" where
    nothing could narrow it: each now names a fix that exists."""
    await graph.apply_definitions(wide())
    with pytest.raises(TooLarge, match=r"more than 1000 features, .*table\.features\(limit, offset\)"):
        await graph.impact("warehouse.wide", 1)
    node = await resolve("table:warehouse.wide", graph.nodes)
    assert node is not None
    # 101 nodes at depth 1, the service one hop further: only depth 1 fits in 101
    with pytest.raises(TooLarge, match="within 2 hops: ask for depth 1 or less"):
        await topology(node, "DOWNSTREAM", 2, None, graph.incident, graph.nodes, MAX_NEIGHBOURS + 1)
    assert "graph(root, depth: 1) draws the first 100" in str(walk_too_large("wide:f0001", 1))
