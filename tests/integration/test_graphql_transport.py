"""/graphql before GraphQL (review s53 F1-F3): bodies that are not a JSON object, not
UTF-8 or nested too deeply, and strawberry's transport errors are 400s with the service's
JSON error body, never a 500; a query over the token limit or a body over /graphql's own
limit is refused before it holds the serving event loop."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

import httpx
import pytest
from graphql import get_introspection_query

from lineage.graph.memory import InMemoryGraph
from lineage.graphql import LineageGraphQL
from lineage.graphql_budget import MAX_BODY_BYTES, MAX_TOKENS
from tests.support import Background, ServerProcess, http_post

JSON = "application/json"


def _send(
    method: str, url: str, body: bytes = b"", ctype: str = JSON
) -> tuple[int, str, dict[str, Any], float]:
    """status, content type, JSON document, seconds taken, from a LineageGraphQL."""
    app = LineageGraphQL(InMemoryGraph())

    async def go() -> tuple[int, str, dict[str, Any], float]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://lineage") as client:
            t0 = time.perf_counter()
            r = await client.request(method, url, content=body, headers={"content-type": ctype})
            return r.status_code, r.headers["content-type"], r.json(), time.perf_counter() - t0

    return asyncio.run(go())


def _error(status: int, ctype: str, doc: dict[str, Any]) -> str:
    """The message of the service's JSON error body, checked to be one (a 400)."""
    assert (status, ctype) == (400, JSON), (status, ctype, doc)
    assert doc["error"]["code"] == "INVALID_ARGUMENT" and doc["error"]["details"] == [], doc
    assert set(doc) == {"error"} and set(doc["error"]) == {"code", "message", "details"}, doc
    message: str = doc["error"]["message"]
    return message


DEEP = b"[" * 5000 + b"]" * 5000


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        (b"null", 'must be a JSON object {"query": ...}, not null'),
        (b'"{ __typename }"', "not a JSON string (the query text alone?"),
        (b'"x"', "not a JSON string"),
        (b"1", "not a JSON number"),
        (b" true", "not a JSON boolean"),
        (b'{"query": "{ __typename }"}\xff', "not UTF-8: byte 0xff at offset 27"),
        (b'{"query": "{ __typename }", "variables": {"a": "\xff"}}', "not UTF-8: byte 0xff at offset 48"),
        (b'{"query": "{ __typename }", "variables": {"a": ' + DEEP + b"}}", "nested too deeply"),
        (DEEP, "nested too deeply"),
        # past 4,300 digits Python's int() refuses with a plain ValueError
        (b'{"query": "{ __typename }", "variables": {"a": ' + b"9" * 5000 + b"}}", "malformed JSON: "),
        (b"9" * 5000, "malformed JSON: "),
    ],
)
def test_a_body_that_is_not_a_json_object_is_a_400_naming_the_problem_not_a_500(
    body: bytes, needle: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        message = _error(*_send("POST", "/graphql", body)[:3])
    assert needle in message, message
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []


@pytest.mark.parametrize(
    ("method", "url", "ctype", "body", "needle"),
    [
        ("POST", "/graphql", "text/plain", b'{"query": "{ __typename }"}', "Unsupported content type"),
        ("POST", "/graphql", "application/graphql", b"{ __typename }", "Unsupported content type"),
        ("POST", "/graphql", "multipart/form-data; boundary=x", b"--x--\r\n", "Unsupported content type"),
        ("POST", "/graphql", JSON, b"{bad json", "malformed JSON: Expecting property name"),
        ("POST", "/graphql", JSON, b"", "malformed JSON: Expecting value: line 1 column 1"),
        ("POST", "/graphql", JSON, b'[{"query": "{ __typename }"}]', "Batching is not enabled"),
        ("POST", "/graphql", JSON, b"{}", "No GraphQL query found"),
        ("POST", "/graphql", JSON, b'{"query": 5}', "`query` must be a string"),
        ("POST", "/graphql", JSON, b'{"query": "{ __typename }", "variables": "x"}', "`variables` must be"),
        ("POST", "/graphql", JSON, b'{"query": "{ __typename }", "operationName": "Nope"}', 'named "Nope"'),
        ("GET", "/graphql?query=%7B__typename%7D&variables=%7Bbad", JSON, b"", "malformed JSON"),
        ("GET", "/graphql?query=mutation%7Bx%7D", JSON, b"", "mutations are not allowed"),
    ],
)
def test_strawberrys_transport_errors_are_the_services_json_error(
    method: str, url: str, ctype: str, body: bytes, needle: str
) -> None:
    message = _error(*_send(method, url, body, ctype)[:3])
    assert needle in message, message


def test_a_query_over_the_token_limit_is_one_graphql_error_before_it_is_parsed_whole() -> None:
    """100,000 fields (300 KB) took 2.7 s to parse and validate on the event loop."""
    query = '{ feature(id: "a:b") { ' + "id " * 100_000 + "} }"
    status, _, doc, took = _send("POST", "/graphql", json.dumps({"query": query}).encode())
    assert status == 200 and doc["data"] is None, doc
    [error] = doc["errors"]
    assert f"Document contains more than {MAX_TOKENS} tokens" in error["message"], error
    assert took < 1.0, took
    # GraphiQL's schema introspection (the largest query a client of ours sends) still passes
    status, _, doc, _ = _send("POST", "/graphql", json.dumps({"query": get_introspection_query()}).encode())
    assert status == 200 and "errors" not in doc and doc["data"]["__schema"]["queryType"], doc


def test_bad_bodies_through_the_server_are_400s(server: ServerProcess) -> None:
    for body in (b"null", b'{"query": "{ __typename }"}\xff', DEEP):
        status, raw, headers = http_post(server.url + "/graphql", body)
        _error(status, headers["content-type"], json.loads(raw))
    status, raw, headers = http_post(server.url + "/graphql", b"{}", {"content-type": "text/plain"})
    assert _error(status, headers["content-type"], json.loads(raw)) == "Unsupported content type"


def test_a_body_over_the_graphql_limit_is_a_413_at_once_and_joins_meanwhile_keep_their_time(
    server: ServerProcess,
) -> None:
    """A body within limits.max_body_bytes (the server's: 256 KiB) but over /graphql's own:
    80,000 fields, which took seconds to parse with every join on the process waiting."""
    query = '{ feature(id: "user_profile:age") { ' + "id " * 80_000 + "} }"
    body = json.dumps({"query": query}).encode()
    assert MAX_BODY_BYTES < len(body) < 256 << 10
    latencies: list[float] = []

    def join() -> None:
        t0 = time.perf_counter()
        status, doc = server.join(
            {"entities": {"user_id": [1]}, "features": ["user_profile:age"]},
            {"x-featurestore-deadline-ms": "1000"},
        )
        latencies.append(time.perf_counter() - t0)
        assert status == 200, doc

    with Background(join):
        time.sleep(0.2)
        t0 = time.perf_counter()
        status, raw, headers = http_post(server.url + "/graphql", body)
        took = time.perf_counter() - t0
        time.sleep(0.2)
    assert status == 413 and headers["content-type"] == JSON, raw
    doc = json.loads(raw)
    assert doc["error"]["code"] == "RESOURCE_EXHAUSTED", doc
    assert doc["error"]["details"] == [{"limit_bytes": MAX_BODY_BYTES}], doc
    assert took < 1.0, took
    assert latencies and max(latencies) < 1.0, max(latencies)
