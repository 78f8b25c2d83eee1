"""A web page of another site cannot write into a real server (review s58 F1): a push must
be declared JSON (415 otherwise) and a write carrying another site's ``Origin`` is 403,
with or without tokens; clients that are not browsers, the server's own origin and the
join are served as before."""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import ServerProcess, http_get

WRITE = "write-token-5d1e-90ab"
PUSH_PATH, JOIN_PATH = "/v1/feature/push", "/v1/feature/join"
FORM_TYPES = [
    "text/plain;charset=UTF-8",  # what fetch() sends with a string body
    "application/x-www-form-urlencoded",  # a form's, and what curl -d sends unless told
    "multipart/form-data; boundary=x",
    "application/xml",
]


def push_body(user_id: int, age: int = 99) -> bytes:
    rows = {"user_id": [user_id], "age": [age], "tenure_days": [1], "num_devices": [1], "country": ["XX"],
            "plan_tier": ["free"], "preferred_language": ["en"], "lifetime_value": [1.0],
            "credit_score": [1.0], "event_timestamp": ["2026-11-21T12:00:00Z"]}  # fmt: skip
    return json.dumps({"feature_view": "user_profile", "rows": rows}).encode()


def start(test_repo: Path, work: Path, extra: str = "") -> ServerProcess:
    config = work / "config.yaml"
    config.write_text(
        f"registry: {{path: {work / 'registry'}}}\n"
        "stores: {default: {kind: memory}, local: {kind: memory}}\n"
        "limits: {deadline_ms: 2000}\n" + extra
    )
    args = ["--config", str(config), "--definitions", str(test_repo)]
    return ServerProcess(args, log_path=work / "server.log").start()


@pytest.fixture(scope="module")
def open_server(test_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """No tokens: the default of make run and the compose stack."""
    proc = start(test_repo, tmp_path_factory.mktemp("open"))
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def token_server(test_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    work = tmp_path_factory.mktemp("tokens")
    (work / "tokens").write_text(f"{WRITE} read,write\n")
    proc = start(test_repo, work, f"auth: {{tokens_file: {work / 'tokens'}}}\n")
    yield proc
    proc.stop()


def post(
    conn: http.client.HTTPConnection, path: str, body: bytes, headers: dict[str, str]
) -> tuple[int, Any, dict[str, str]]:
    """One POST with exactly ``headers`` (and Host, Content-Length): urllib would add a
    content type of its own."""
    conn.request("POST", path, body, headers)
    r = conn.getresponse()
    raw = r.read()
    return r.status, json.loads(raw), {k.lower(): v for k, v in r.getheaders()}


def request(
    server: ServerProcess, path: str, body: bytes, headers: dict[str, str]
) -> tuple[int, Any, dict[str, str]]:
    conn = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=10)
    try:
        return post(conn, path, body, headers)
    finally:
        conn.close()


def age_of(server: ServerProcess, user_id: int, token: str | None = None) -> Any:
    """The served age of ``user_id`` (None: no row)."""
    headers = {"content-type": "application/json"} | ({"authorization": f"Bearer {token}"} if token else {})
    join = {"entities": {"user_id": [user_id]}, "features": ["user_profile:age"]}
    status, doc, _ = request(server, JOIN_PATH, json.dumps(join).encode(), headers)
    assert status == 200, doc
    return doc["results"][1]["values"][0]


def test_the_reviewers_text_plain_push_from_another_site_is_refused_and_writes_nothing(
    open_server: ServerProcess,
) -> None:
    headers = {"content-type": "text/plain", "origin": "http://evil.example"}
    status, doc, _ = request(open_server, PUSH_PATH, push_body(900_001), headers)
    assert status == 403 and doc["error"]["code"] == "PERMISSION_DENIED", doc
    assert age_of(open_server, 900_001) is None


@pytest.mark.parametrize("ctype", FORM_TYPES)
def test_a_push_of_another_content_type_is_415_naming_it_and_the_json_it_takes(
    open_server: ServerProcess, ctype: str
) -> None:
    user_id = 900_010 + FORM_TYPES.index(ctype)
    status, doc, headers = request(open_server, PUSH_PATH, push_body(user_id), {"content-type": ctype})
    assert status == 415 and headers["content-type"] == "application/json", doc
    error = doc["error"]
    assert error["code"] == "INVALID_ARGUMENT"
    assert f"content-type {ctype!r} is not supported by /v1/feature/push" in error["message"]
    assert "it takes application/json" in error["message"]
    assert error["details"] == [{"content_type": ctype, "expected": "application/json"}]
    assert age_of(open_server, user_id) is None


JSON_TYPES = ["application/json", "Application/JSON; charset=utf-8", None]
OTHER_ORIGINS = ["http://evil.example", "null", "http://127.0.0.1:1", "https://127.0.0.1", "evil.example"]


@pytest.mark.parametrize("ctype", JSON_TYPES)
def test_a_push_declared_json_or_declaring_no_type_is_written(
    open_server: ServerProcess, ctype: str | None
) -> None:
    user_id = 900_100 + JSON_TYPES.index(ctype)
    headers = {} if ctype is None else {"content-type": ctype}
    status, doc, _ = request(open_server, PUSH_PATH, push_body(user_id, 41), headers)
    assert status == 200 and doc["rows_written"] == 1, doc
    assert age_of(open_server, user_id) == 41


@pytest.mark.parametrize("origin", OTHER_ORIGINS)
def test_a_json_push_carrying_another_sites_origin_is_403_naming_the_rule(
    open_server: ServerProcess, origin: str
) -> None:
    user_id = 900_200 + OTHER_ORIGINS.index(origin)
    headers = {"content-type": "application/json", "origin": origin}
    status, doc, headers = request(open_server, PUSH_PATH, push_body(user_id), headers)
    assert status == 403 and doc["error"]["code"] == "PERMISSION_DENIED", doc
    assert "www-authenticate" not in headers  # no token would help
    host = f"127.0.0.1:{open_server.http_port}"
    assert (
        f"cross-site request refused: Origin {origin!r} is not this server's origin"
        in doc["error"]["message"]
    )
    assert doc["error"]["details"] == [{"reason": "cross_site", "origin": origin, "host": host}]
    assert age_of(open_server, user_id) is None
    metrics = http_get(open_server.url + "/metrics")[1].decode()
    assert (
        'featurestore_requests_total{outcome="PERMISSION_DENIED",protocol="http",route="/v1/feature/push"}'
        in metrics
    )


def test_a_push_from_the_servers_own_origin_or_through_a_proxy_that_names_it_is_written(
    open_server: ServerProcess,
) -> None:
    own = {"content-type": "application/json", "origin": f"http://127.0.0.1:{open_server.http_port}"}
    assert request(open_server, PUSH_PATH, push_body(900_041, 42), own)[0] == 200
    proxied = {
        "content-type": "application/json",
        "host": "featurestore:8080",  # the name a reverse proxy dials
        "x-forwarded-host": "Features.Example.com",  # the one the browser dialled
        "origin": "https://features.example.com",
    }
    assert request(open_server, PUSH_PATH, push_body(900_042, 43), proxied)[0] == 200
    assert (age_of(open_server, 900_041), age_of(open_server, 900_042)) == (42, 43)


def test_the_connection_serves_the_next_request_after_a_refused_push(open_server: ServerProcess) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", open_server.http_port, timeout=10)
    try:
        assert post(conn, PUSH_PATH, push_body(900_051), {"origin": "http://evil.example"})[0] == 403
        assert post(conn, PUSH_PATH, push_body(900_051), {"content-type": "text/plain"})[0] == 415
        join = {"entities": {"user_id": [17]}, "features": ["user_profile:age"]}
        status, doc, _ = post(
            conn, JOIN_PATH, json.dumps(join).encode(), {"content-type": "application/json"}
        )
        assert status == 200 and doc["results"][1]["statuses"] == ["PRESENT"]
    finally:
        conn.close()


def test_a_cross_site_push_is_refused_whatever_the_token(token_server: ServerProcess) -> None:
    headers = {"content-type": "application/json", "authorization": f"Bearer {WRITE}"}
    status, doc, _ = request(
        token_server, PUSH_PATH, push_body(900_061), headers | {"origin": "http://evil.example"}
    )
    assert status == 403 and doc["error"]["details"][0]["reason"] == "cross_site", doc
    assert age_of(token_server, 900_061, WRITE) is None
    assert request(token_server, PUSH_PATH, push_body(900_061, 44), headers)[0] == 200
    assert age_of(token_server, 900_061, WRITE) == 44


def test_a_join_of_a_form_type_from_another_site_is_answered_but_unreadable_by_the_page(
    open_server: ServerProcess,
) -> None:
    """The join writes nothing and is kept as it was (docs/security.md, "Browsers"): the
    server grants no CORS, so the page cannot read the answer."""
    join = {"entities": {"user_id": [17]}, "features": ["user_profile:age"]}
    headers = {"content-type": "application/x-www-form-urlencoded", "origin": "http://evil.example"}
    status, doc, got = request(open_server, JOIN_PATH, json.dumps(join).encode(), headers)
    assert status == 200 and doc["results"][1]["statuses"] == ["PRESENT"]
    assert not [name for name in got if name.startswith("access-control-")]


def test_the_openapi_document_gives_the_push_its_415_and_the_cross_site_403(
    open_server: ServerProcess,
) -> None:
    spec = json.loads(http_get(open_server.url + "/openapi.json")[1])
    responses = spec["paths"][PUSH_PATH]["post"]["responses"]
    assert "application/json" in responses["415"]["description"]
    assert "cross_site" in responses["403"]["description"]
