"""GraphQL ``feature(id) { drift(since, until, limit) }`` over the in-process graph."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from lineage.graph.base import DefinitionFacts, FeatureInfo
from lineage.graph.drift import DriftRecord
from lineage.graph.memory import InMemoryGraph
from lineage.graphql import LineageGraphQL

T0 = 1_796_000_000_000  # 2026-11-30T00:53:20Z, epoch ms


def graph_with_drift() -> InMemoryGraph:
    graph = InMemoryGraph()
    facts = DefinitionFacts(
        project="p",
        valid_from_ms=0,
        registry_version=1,
        views=("v",),
        services=(),
        features=(FeatureInfo("v:x", "v", "float64", 1, (1,)),),
        contains=(("v", "v:x"),),
        uses=(),
        derived_from=(),
    )
    records = [
        DriftRecord("v:x", T0 + i * 60_000, "ks", 0.1 + i / 100, 1e-6, 1000, 3, "w1") for i in range(5)
    ]

    async def fill() -> None:
        await graph.apply_definitions(facts)
        await graph.add_drift(records)

    asyncio.run(fill())
    return graph


def post(app: LineageGraphQL, query: str) -> dict[str, Any]:
    async def go() -> dict[str, Any]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://lineage") as client:
            r = await client.post("/graphql", json={"query": query})
            assert r.status_code == 200
            doc: dict[str, Any] = r.json()
            return doc

    return asyncio.run(go())


def test_drift_records_are_read_by_time_range_newest_first_within_the_limit_then_oldest_first() -> None:
    app = LineageGraphQL(graph_with_drift())
    doc = post(
        app,
        '{ feature(id: "v:x") { drift(since: "2026-11-30T00:54:00Z", limit: 2) '
        "{ at test statistic pValue windowSize reference server } } }",
    )
    assert "errors" not in doc, doc
    drift = doc["data"]["feature"]["drift"]
    assert [round(d["statistic"], 6) for d in drift] == [0.13, 0.14]  # the newest 2 of the 4 since then
    assert drift[0] == {"at": "2026-11-30T00:56:20+00:00", "test": "ks", "statistic": 0.13, "pValue": 1e-06,
                        "windowSize": 1000, "reference": 3, "server": "w1"}  # fmt: skip
    doc = post(app, '{ feature(id: "v:x") { drift(until: "2026-11-30T00:54:20Z") { statistic } } }')
    assert doc["data"]["feature"]["drift"] == [{"statistic": 0.1}]


def test_a_drift_limit_out_of_range_is_a_graphql_error() -> None:
    doc = post(LineageGraphQL(graph_with_drift()), '{ feature(id: "v:x") { drift(limit: 0) { at } } }')
    assert "limit must be between 1 and 1000, got 0" in doc["errors"][0]["message"]
