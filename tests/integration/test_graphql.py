"""GraphQL lineage on a real server with the embedded (in-process) graph: lineage from
definitions before any read, from serving after, impact analysis, limits, errors."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import urllib.request
from typing import Any

import httpx
import pytest

from lineage.events import LineageEvent
from lineage.graph.base import DefinitionFacts, FeatureInfo
from lineage.graph.memory import InMemoryGraph
from lineage.graphql import MAX_COST, LineageGraphQL
from tests.support import ServerProcess, http_post, wait_until


def gql(server: ServerProcess, query: str, **variables: Any) -> tuple[int, dict[str, Any]]:
    status, raw, _ = http_post(
        server.url + "/graphql", json.dumps({"query": query, "variables": variables}).encode()
    )
    return status, json.loads(raw)


def test_lineage_exists_before_the_first_read(server: ServerProcess) -> None:
    status, doc = gql(
        server,
        'query { feature(id: "user_item:affinity") { id view dtype version upstream(depth: 1) { id } '
        "producedBy { name role } featureServices } }",
    )
    assert status == 200 and "errors" not in doc, doc
    f = doc["data"]["feature"]
    assert f["view"] == "user_item" and f["dtype"] == "float64" and f["version"] >= 1
    assert [u["id"] for u in f["upstream"]] == ["item:price", "user_profile:age"]
    roles = {(t["role"], t["name"].split("/")[-1]) for t in f["producedBy"]}
    assert ("upstream", "warehouse.clicks") in roles and ("batch", "user_item.parquet") in roles
    assert f["featureServices"] == ["candidates_v1"]


def test_serving_adds_tables_counts_and_events(server: ServerProcess) -> None:
    for _ in range(3):
        server.join({"entities": {"user_id": [1, 2], "item_id": [1, 2]}, "feature_service": "candidates_v1"})

    def served() -> bool:
        _, doc = gql(server, '{ feature(id: "user_item:affinity") { servedBy { server count } } }')
        return bool(doc["data"]["feature"]["servedBy"])

    wait_until(served, 10, "lineage of the joins to reach the graph", interval=0.2)
    _, doc = gql(
        server,
        """query ($id: String!) {
             feature(id: $id) { servedBy { server count lastSeen } producedBy { name role } }
             lineageEvents(featureId: $id, limit: 10) { featureId featureVersion sourceTable timestamp servedCount
               traceIds registryVersion upstreamDeps service }
           }""",
        id="user_item:affinity",
    )
    f = doc["data"]["feature"]
    assert f["servedBy"][0]["count"] >= 2 and f["servedBy"][0]["server"].startswith("featurestore@")
    assert {"name": "memory://local/user_item", "role": "online"} in f["producedBy"]
    events = doc["data"]["lineageEvents"]
    assert events and all(e["sourceTable"] == "memory://local/user_item" for e in events)
    assert all(len(t) == 32 for e in events for t in e["traceIds"])
    assert "warehouse.clicks" in events[0]["upstreamDeps"] and "user_profile:age" in events[0]["upstreamDeps"]


def test_table_impact(server: ServerProcess) -> None:
    _, doc = gql(
        server,
        '{ table(name: "warehouse.users") { features { id } impact(depth: 3) { features featureServices } } }',
    )
    t = doc["data"]["table"]
    assert "user_profile:age" in [f["id"] for f in t["features"]]
    # user_item:affinity derives from user_profile:age: a change to warehouse.users reaches it
    assert "user_item:affinity" in t["impact"]["features"]
    assert set(t["impact"]["featureServices"]) == {"candidates_v1", "ranker_v1"}
    _, none = gql(server, '{ table(name: "no.such_table") { features { id } } }')
    assert none["data"]["table"] is None


def test_as_of_before_the_definitions(server: ServerProcess) -> None:
    _, doc = gql(server, '{ feature(id: "user_item:affinity", asOf: "2001-01-01T00:00:00Z") { id } }')
    assert doc["data"]["feature"] is None
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 60))
    _, doc = gql(server, f'{{ feature(id: "user_item:affinity", asOf: "{now}") {{ upstream {{ id }} }} }}')
    assert len(doc["data"]["feature"]["upstream"]) == 2


def _nested(levels: int) -> str:
    inner = "id"
    for _ in range(levels):
        inner = f"upstream {{ {inner} }}"
    return f'{{ feature(id: "a:b") {{ {inner} }} }}'


@pytest.mark.parametrize(
    ("query", "needle"),
    [
        (
            '{ feature(id: "user_item:affinity") { upstream(depth: 9) { id } } }',
            "depth must be between 1 and 5",
        ),
        (
            '{ lineageEvents(featureId: "user_item:affinity", limit: 5000) { timestamp } }',
            "limit must be between",
        ),
        ('{ feature(id: "user_item:affinity") { shoeSize } }', "shoeSize"),
        ("{ feature(id: ", "Syntax Error"),
        ("{ feature(id: 5) { id } }", "String"),
        (_nested(12), "exceeds maximum operation depth"),
    ],
)
def test_bad_queries_are_graphql_errors_never_500(server: ServerProcess, query: str, needle: str) -> None:
    status, doc = gql(server, query)
    assert status in (200, 400)
    assert doc.get("errors") and needle in json.dumps(doc["errors"]), doc


def test_graphiql_is_served(server: ServerProcess) -> None:
    req = urllib.request.Request(server.url + "/graphql", headers={"accept": "text/html"})
    with urllib.request.urlopen(req, timeout=5) as r:
        assert r.status == 200 and b"graphiql" in r.read().lower()


def _dense_graph(n: int) -> InMemoryGraph:
    """hub:x derives from n features, each of which derives from all the others."""
    ids = [f"v{i}:f" for i in range(n)]
    everyone = [*ids, "hub:x"]
    graph = InMemoryGraph()
    facts = DefinitionFacts(
        project="dense",
        valid_from_ms=0,
        registry_version=1,
        views=tuple(sorted({f.partition(":")[0] for f in everyone})),
        services=(),
        features=tuple(FeatureInfo(f, f.partition(":")[0], "int64", 1, (1,)) for f in everyone),
        contains=tuple((f.partition(":")[0], f) for f in everyone),
        uses=(),
        derived_from=tuple(("hub:x", f) for f in ids) + tuple((a, b) for a in ids for b in ids if a != b),
    )
    asyncio.run(graph.apply_definitions(facts))
    return graph


def _post(app: LineageGraphQL, query: str) -> tuple[int, dict[str, Any]]:
    async def go() -> tuple[int, dict[str, Any]]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://lineage") as client:
            r = await client.post("/graphql", json={"query": query})
            return r.status_code, r.json()

    return asyncio.run(go())


def test_a_query_over_the_cost_budget_is_one_graphql_error() -> None:
    """Nested levels multiply graph lookups (here 150 x 150) while every list stays
    under its own limit: the request budget ends the query with one clear error."""
    app = LineageGraphQL(_dense_graph(150))
    status, doc = _post(app, '{ feature(id: "hub:x") { upstream { id upstream { id } } } }')
    assert status == 200, doc
    assert doc["data"] is None
    [error] = doc["errors"]
    assert error["message"].startswith(f"query too expensive: it needs more than {MAX_COST} graph lookups")
    assert error["extensions"] == {"code": "QUERY_TOO_EXPENSIVE"}
    # one level of the same graph is well within budget, and the budget is per request
    status, doc = _post(app, '{ feature(id: "hub:x") { upstream { id } } }')
    assert status == 200 and "errors" not in doc, doc
    assert len(doc["data"]["feature"]["upstream"]) == 150


def test_served_by_lists_the_newest_servers_since_a_time_at_most_limit_and_refuses_a_limit_past_its_bound() -> (
    None
):
    graph = _dense_graph(1)
    events = [
        LineageEvent(
            feature_id="hub:x",
            feature_version=1,
            source_table="memory://d/hub",
            timestamp=f"2024-01-01T00:00:{i:02d}Z",
            upstream_deps=[],
            registry_version=1,
            served_count=1,
            trace_ids=[],
            service=f"fs@pod{i}",
        )
        for i in range(30)
    ]
    asyncio.run(graph.write_events(events))
    app = LineageGraphQL(graph)
    status, doc = _post(app, '{ feature(id: "hub:x") { servedBy(limit: 3) { server lastSeen } } }')
    assert status == 200, doc
    assert [s["server"] for s in doc["data"]["feature"]["servedBy"]] == ["fs@pod29", "fs@pod28", "fs@pod27"]
    since = '{ feature(id: "hub:x") { servedBy(since: "2024-01-01T00:00:25Z") { server } } }'
    assert len(_post(app, since)[1]["data"]["feature"]["servedBy"]) == 5
    assert (
        len(_post(app, '{ feature(id: "hub:x") { servedBy { server } } }')[1]["data"]["feature"]["servedBy"])
        == 30
    )
    status, doc = _post(app, '{ feature(id: "hub:x") { servedBy(limit: 5000) { server } } }')
    assert "limit must be between 1 and 1000" in json.dumps(doc["errors"]), doc


def test_the_budget_counts_aliases_and_lists_too() -> None:
    app = LineageGraphQL(_dense_graph(20), max_cost=50)
    fields = " ".join(f'a{i}: feature(id: "v{i}:f") {{ upstream {{ id }} }}' for i in range(3))
    status, doc = _post(app, f"{{ {fields} }}")  # 3 x (1 + 1 + 19) = 63
    assert status == 200 and doc["data"] is None
    assert "more than 50 graph lookups" in doc["errors"][0]["message"]
    status, doc = _post(app, '{ a: feature(id: "v1:f") { upstream { id } } }')  # 21
    assert status == 200 and "errors" not in doc, doc


class _FailingGraph(InMemoryGraph):
    async def table_exists(self, name: str) -> bool:
        raise ConnectionError("graph backend unreachable")


def test_a_callers_bad_query_is_not_logged_as_an_error_but_a_failing_graph_is(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """strawberry logs every GraphQL error at ERROR with the query: a caller sending bad
    queries would fill the log. Caller mistakes go to DEBUG; a backend failure stays."""
    app = LineageGraphQL(_dense_graph(3), max_cost=5)
    with caplog.at_level(logging.DEBUG):
        for query in [
            "{ feature(id: ",
            "{ feature(id: 5) { id } }",
            _nested(12),
            '{ feature(id: "hub:x") { upstream { id upstream { id } } } }'.replace("hub:x", "v0:f"),
        ]:
            _, doc = _post(app, query)
            assert doc.get("errors"), doc
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []
    assert any("graphql request refused" in r.getMessage() for r in caplog.records)
    caplog.clear()
    _, doc = _post(LineageGraphQL(_FailingGraph()), '{ table(name: "t") { name } }')
    # the caller gets a fixed error (review s58 #8), the log the exception
    [error] = doc["errors"]
    assert (error["message"], error["extensions"]) == ("lineage graph error", {"code": "INTERNAL"})
    assert [r.levelno for r in caplog.records if "graph backend unreachable" in r.getMessage()] == [
        logging.ERROR
    ]


def test_a_graphql_body_over_the_body_limit_is_a_413(server: ServerProcess) -> None:
    """strawberry reads a body whole, of any size: the server bounds it first."""
    body = b'{"query": "{ __typename }", "pad": "' + b"a" * (5 << 20) + b'"}'
    status, raw, headers = http_post(server.url + "/graphql", body, timeout=30)
    assert status == 413 and headers["content-type"] == "application/json"
    assert json.loads(raw)["error"]["code"] == "RESOURCE_EXHAUSTED"
    status, doc = gql(server, "{ __typename }")
    assert status == 200 and doc == {"data": {"__typename": "Query"}}


def test_the_graph_query_spends_the_same_budget() -> None:
    """Each hop asks the graph per node kind, and each node and edge answered costs 1:
    60 features that all derive from each other are over a budget of 400."""
    app = LineageGraphQL(_dense_graph(60), max_cost=400)
    status, doc = _post(app, '{ graph(root: "hub:x", direction: UPSTREAM, depth: 2) { nodes { id } } }')
    assert status == 200 and doc["data"] is None
    assert doc["errors"][0]["extensions"] == {"code": "QUERY_TOO_EXPENSIVE"}
    status, doc = _post(app, '{ graph(root: "v1:f", direction: DOWNSTREAM, depth: 1) { nodes { id } } }')
    assert status == 200 and "errors" not in doc, doc
    assert len(doc["data"]["graph"]["nodes"]) == 61  # v1:f, the 59 others and hub:x
    # a walk that reaches too much is refused before it is answered, whatever the budget
    app = LineageGraphQL(_dense_graph(150))
    status, doc = _post(app, '{ graph(root: "hub:x", direction: UPSTREAM, depth: 2) { nodes { id } } }')
    assert status == 200 and "within 2 hops: ask for depth 1 or less" in doc["errors"][0]["message"]


def test_aliased_searches_are_charged_as_the_scans_they_are() -> None:
    """A search reads every name, so a request of many aliased searches is over budget
    well before the alias limit (30, half a second on 10,000 features): 9 pass, 11 do not."""
    app = LineageGraphQL(_dense_graph(5))

    def searches(n: int) -> str:
        return "{ " + " ".join(f's{i}: search(text: "x") {{ id }}' for i in range(n)) + " }"

    status, doc = _post(app, searches(9))
    assert status == 200 and "errors" not in doc, doc
    status, doc = _post(app, searches(11))
    assert status == 200 and doc["data"] is None
    assert doc["errors"][0]["extensions"] == {"code": "QUERY_TOO_EXPENSIVE"}


def test_an_empty_node_name_is_a_callers_error_not_a_logged_graph_failure(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = LineageGraphQL(_dense_graph(3))
    with caplog.at_level(logging.DEBUG):
        for query, needle in [
            ('{ node(id: "feature:") { id } }', "is not 'kind:name'"),
            ('{ graph(root: "") { nodes { id } } }', "names no node"),
            ('{ graph(root: "table:") { nodes { id } } }', "names no node"),
        ]:
            status, doc = _post(app, query)
            assert status == 200 and needle in doc["errors"][0]["message"], doc
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []


def test_the_graph_as_of_before_the_definitions_is_null_like_the_feature(server: ServerProcess) -> None:
    query = '{ graph(root: "user_item:affinity", direction: DOWNSTREAM, asOf: "%s") { nodes { id } } }'
    _, doc = gql(server, query % "2001-01-01T00:00:00Z")
    assert doc["data"]["graph"] is None, doc
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 60))
    _, doc = gql(server, query % now)
    assert "feature:user_item:affinity" in [n["id"] for n in doc["data"]["graph"]["nodes"]], doc


class _CountingGraph(InMemoryGraph):
    """The in-process graph, counting the walks it is asked for."""

    def __init__(self) -> None:
        super().__init__()
        self.walks = 0

    async def impact(self, table: str, depth: int, as_of_ms: int | None = None) -> Any:
        self.walks += 1
        return await super().impact(table, depth, as_of_ms)

    async def downstream(self, feature_id: str, depth: int, as_of_ms: int | None = None) -> list[str]:
        self.walks += 1
        return await super().downstream(feature_id, depth, as_of_ms)


def _layers(graph: InMemoryGraph, width: int, depth: int) -> None:
    """``depth + 1`` layers of ``width`` features, each derived from every feature of the
    layer before; the first is produced by warehouse.t."""
    layers = [[f"v{n}:f{i}" for i in range(width)] for n in range(depth + 1)]
    every = [f for layer in layers for f in layer]
    facts = DefinitionFacts(
        project="layers", valid_from_ms=0, registry_version=1,
        views=tuple(f"v{n}" for n in range(depth + 1)), services=(),
        features=tuple(FeatureInfo(f, f.partition(":")[0], "int64", 1, (1,)) for f in every),
        contains=tuple((f.partition(":")[0], f) for f in every), uses=(),
        derived_from=tuple((b, a) for n in range(depth) for b in layers[n + 1] for a in layers[n]),
        produced_by=tuple((f, "warehouse.t", "batch") for f in layers[0]),
    )  # fmt: skip
    asyncio.run(graph.apply_definitions(facts))


def test_an_impact_is_charged_for_every_lookup_it_may_make_before_the_graph_walks() -> None:
    """impact(depth: 5) may ask the graph 7 times (the table's features, 5 hops, their
    services): a request that cannot pay for that is refused without walking (it was
    charged 1, walked, and charged for the result afterwards)."""
    graph = _CountingGraph()
    _layers(graph, 3, 5)
    query = '{ table(name: "warehouse.t") { impact(depth: 5) { features } } }'
    status, doc = _post(LineageGraphQL(graph, max_cost=1 + 7 - 1), query)  # table + impact, one short
    assert status == 200 and doc["data"] is None
    assert doc["errors"][0]["extensions"] == {"code": "QUERY_TOO_EXPENSIVE"}
    assert graph.walks == 0
    status, doc = _post(LineageGraphQL(graph, max_cost=1 + 7 + 18), query)  # and the 18 features
    assert status == 200 and "errors" not in doc, doc
    assert len(doc["data"]["table"]["impact"]["features"]) == 18 and graph.walks == 1
    status, doc = _post(
        LineageGraphQL(graph, max_cost=1 + 5 - 1), '{ feature(id: "v0:f0") { downstream(depth: 5) { id } } }'
    )
    assert doc["data"] is None and graph.walks == 1  # a hop per level: 5, before the walk


def test_a_walk_that_reaches_too_much_is_a_callers_graphql_error_and_ends_at_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """6 layers of 100 features, each derived from every feature of the layer before:
    impact(depth: 5) took 28 s of the serving event loop (a walk per feature, a list
    searched per step); the walk now stops at its bound, an error naming a smaller depth."""
    graph = InMemoryGraph()
    _layers(graph, 100, 5)
    with caplog.at_level(logging.DEBUG):
        status, doc = _post(
            LineageGraphQL(graph), '{ table(name: "warehouse.t") { impact(depth: 5) { features } } }'
        )
    assert status == 200 and doc["data"] == {"table": None}, doc
    assert "ask for a smaller depth" in doc["errors"][0]["message"], doc
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []
    status, doc = _post(
        LineageGraphQL(graph), '{ table(name: "warehouse.t") { impact(depth: 1) { features } } }'
    )
    assert status == 200 and len(doc["data"]["table"]["impact"]["features"]) == 200, doc
