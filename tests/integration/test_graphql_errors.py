"""What GraphQL callers are told, and what the log keeps, when the Bolt graph fails or a
caller's string cannot be sent to it (review s58 #8): the driver's text (the graph's
internal host:port) reached callers with no ``extensions.code``, and a lone surrogate in
a variable was logged as a backend ERROR with a 60-line traceback per request."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from lineage import graphql_errors
from lineage.graph.base import LineageGraph
from lineage.graph.bolt import BoltGraph
from lineage.graph.memory import InMemoryGraph
from lineage.graphql import LineageGraphQL
from tests.harness import free_port
from tests.servers import ArcadeServer

SEARCH = "query ($t: String!) { search(text: $t) { id } }"


async def post(graph: LineageGraph, query: str, variables: dict[str, Any]) -> dict[str, Any]:
    # json.dumps escapes a lone surrogate (valid JSON, as a browser may send it); httpx's
    # own encoder would refuse to send it
    body = json.dumps({"query": query, "variables": variables}).encode()
    transport = httpx.ASGITransport(app=LineageGraphQL(graph))
    async with httpx.AsyncClient(transport=transport, base_url="http://lineage") as client:
        r = await client.post("/graphql", content=body, headers={"content-type": "application/json"})
        assert r.status_code == 200, r.text
        doc: dict[str, Any] = r.json()
        return doc


@pytest.fixture(autouse=True)
def fresh_outage(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(graphql_errors, "OUTAGE", graphql_errors.Outage())


@pytest.fixture(params=["memory", "bolt"])
async def graph(request: pytest.FixtureRequest) -> AsyncIterator[LineageGraph]:
    g: LineageGraph
    if request.param == "memory":
        g = InMemoryGraph()
    else:
        server: ArcadeServer = request.getfixturevalue("arcade")
        g = BoltGraph(server.uri, server.USER, server.PASSWORD, server.DATABASE)
    await g.start()
    yield g
    await g.close()


async def test_a_down_graph_answers_a_fixed_unavailable_error_and_logs_its_details_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    port = free_port()  # nothing listens there
    graph = BoltGraph(f"bolt://127.0.0.1:{port}", "root", "password", "lineage", retries=2)
    try:
        with caplog.at_level(logging.DEBUG, logger="lineage.graphql"):
            for text in ("age", "user", "ranker"):
                doc = await post(graph, SEARCH, {"t": text})
                assert doc["data"] is None
                assert doc["errors"] == [
                    {
                        "message": "lineage graph unavailable",
                        "locations": [{"line": 1, "column": 23}],
                        "path": ["search"],
                        "extensions": {"code": "UNAVAILABLE"},
                    }
                ]
    finally:
        await graph.close()
    mine = [r for r in caplog.records if r.name.startswith(("lineage", "strawberry"))]
    assert [r.levelno for r in mine] == [logging.WARNING], [r.getMessage() for r in mine]
    assert str(port) in mine[0].getMessage() and mine[0].exc_info is None  # details, no traceback


async def test_a_lone_surrogate_in_a_variable_is_the_callers_error_logged_at_debug(
    graph: LineageGraph, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG):
        for _ in range(2):
            doc = await post(graph, SEARCH, {"t": "ab\ud800"})
            assert doc["data"] is None
            [error] = doc["errors"]
            assert error["extensions"] == {"code": "BAD_USER_INPUT"}, doc
            assert (
                error["message"] == "variable $t holds a string that is not valid Unicode (a lone surrogate)"
            )
        doc = await post(graph, SEARCH, {"t": "no-such-name"})  # a valid string still answers
        assert doc == {"data": {"search": []}}
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
    refused = [r for r in caplog.records if "graphql request refused" in r.getMessage()]
    assert len(refused) == 2 and all(r.levelno == logging.DEBUG for r in refused)


def test_an_unencodable_string_is_found_anywhere_in_the_variables() -> None:
    assert graphql_errors.unencodable({"a": "x", "b": [1, {"c": "ok"}]}) is None
    assert graphql_errors.unencodable(None) is None
    assert graphql_errors.unencodable({"a": "x", "b": [1, {"c": "\udfff"}]}) == "$b[1].c"
    assert graphql_errors.unencodable({"a": {"\ud800": 1}}) == "$a"


def test_an_outage_is_logged_at_its_first_error_then_once_a_minute_with_a_count(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [0.0]
    outage = graphql_errors.Outage(clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="lineage.graphql"):
        for t in (0.0, 1.0, 30.0, 59.0, 60.0, 61.0):
            now[0] = t
            outage.failed(RuntimeError(f"down at {t:g}"))
    assert [r.getMessage() for r in caplog.records] == [
        "lineage graph unavailable to GraphQL: down at 0",
        "lineage graph unavailable to GraphQL: down at 60 (3 more since the last such line)",
    ]
