"""GraphQL over a table, view and service of more features than an answer lists (review
s58 #4), on both graphs (the in-process one and Bolt against a real ArcadeDB): the graph
query draws 100 neighbours per node and edge kind and says how many it left out, and
`table.features` pages (`limit`, `offset`, `featureCount`). All of it failed: "use a
smaller depth" at depth 1, "narrow the query" with nothing to narrow it with."""

from __future__ import annotations

from typing import Any

import httpx

from lineage.graph.base import LineageGraph
from lineage.graphql import LineageGraphQL
from tests.contract import test_lineage_graph as contract
from tests.contract.test_lineage_graph_truncation import WIDE, wide

graph = contract.graph  # the fixture: the in-process graph and Bolt (ArcadeDB)


async def ask(graph: LineageGraph, query: str) -> dict[str, Any]:
    transport = httpx.ASGITransport(app=LineageGraphQL(graph))
    async with httpx.AsyncClient(transport=transport, base_url="http://lineage") as client:
        r = await client.post("/graphql", json={"query": query})
        assert r.status_code == 200, r.text
        doc: dict[str, Any] = r.json()
        return doc


async def test_the_graph_of_a_table_of_1500_features_draws_100_and_says_1400_are_left_out(
    graph: LineageGraph,
) -> None:
    await graph.apply_definitions(wide())
    for root, direction, kind in [
        ("table:warehouse.wide", "DOWNSTREAM", "PRODUCED_BY"),
        ("service:bigsvc", "UPSTREAM", "USES"),
        ("view:wide", "DOWNSTREAM", "CONTAINS"),
    ]:
        doc = await ask(
            graph,
            f'{{ graph(root: "{root}", direction: {direction}, depth: 1) {{ nodes {{ id }} edges {{ kind }}'
            " truncated { node kind direction kept dropped } } }",
        )
        assert "errors" not in doc, doc
        g = doc["data"]["graph"]
        assert len(g["nodes"]) == 101 and len(g["edges"]) == 100
        assert g["truncated"] == [
            {"node": root, "kind": kind, "direction": direction, "kept": 100, "dropped": WIDE - 100}
        ]


async def test_a_tables_features_come_in_pages_and_the_error_past_1000_names_them(
    graph: LineageGraph,
) -> None:
    await graph.apply_definitions(wide())
    doc = await ask(
        graph,
        '{ table(name: "warehouse.wide") { featureCount features(limit: 100, offset: 1450) { id } } }',
    )
    assert "errors" not in doc, doc
    t = doc["data"]["table"]
    assert t["featureCount"] == WIDE
    assert [f["id"] for f in t["features"]] == [f"wide:f{i:04d}" for i in range(1450, WIDE)]
    doc = await ask(graph, '{ table(name: "warehouse.wide") { features { id } } }')
    assert "features(limit: 1000, offset: 0)" in doc["errors"][0]["message"], doc
    doc = await ask(graph, '{ table(name: "warehouse.wide") { features(offset: 600) { id } } }')
    assert "errors" not in doc and len(doc["data"]["table"]["features"]) == 900, doc
    doc = await ask(graph, '{ table(name: "warehouse.wide") { impact(depth: 1) { features } } }')
    assert "table.features(limit, offset)" in doc["errors"][0]["message"], doc
    doc = await ask(graph, '{ table(name: "warehouse.wide") { features(limit: 0) { id } } }')
    assert "limit must be between 1 and 1000" in doc["errors"][0]["message"], doc
