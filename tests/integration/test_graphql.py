"""GraphQL lineage on a real server with the embedded (in-process) graph: lineage from
definitions before any read, from serving after, impact analysis, limits, errors."""

from __future__ import annotations

import json
import time
import urllib.request
from typing import Any

import pytest

from tests.support import ServerProcess, http_post, wait_until

pytestmark = pytest.mark.integration


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
