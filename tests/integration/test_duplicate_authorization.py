"""A request carrying ``authorization`` more than once is refused the same way on every
route and both transports, on a real server with tokens: 400 / INVALID_ARGUMENT saying
so, ``WWW-Authenticate: Bearer ..., error="invalid_request"`` (RFC 6750), counted as an
invalid token. Before (review s56, finding 4) the HTTP join took the last value and the
other routes and gRPC the first, so which token authorized a request depended on its route.
featurestore/api/credentials.py."""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from featurestore.v1 import featurestore_pb2 as pb
from tests.integration.test_hostile_clients import counter
from tests.integration.test_security import ADMIN, JOIN, PUSH, READ, WRITE, write_config
from tests.support import ServerProcess

BAD = "not-a-token-of-this-server"
ROUTES = {  # route -> (method, path, body, the token it needs)
    "join": ("POST", "/v1/feature/join", JOIN, READ),
    "join through ASGI": ("POST", "/v1/feature/join?via=asgi", JOIN, READ),
    "push": ("POST", "/v1/feature/push", PUSH, WRITE),
    "registry": ("GET", "/v1/registry", None, ADMIN),
}
MESSAGE = "the request carries more than one authorization header: send one bearer token"
CHALLENGE = 'Bearer realm="featurestore", error="invalid_request"'


@pytest.fixture(scope="module")
def tokens(test_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    work = tmp_path_factory.mktemp("twice")
    env = {"FEATURESTORE_AUTH__TOKENS": f"{READ} read\n{WRITE} write\n{ADMIN} admin,read\n"}
    proc = ServerProcess(
        ["--config", str(write_config(work)), "--definitions", str(test_repo)], env, work / "server.log"
    ).start()
    yield proc
    proc.stop()


def send(server: ServerProcess, route: str, *values: str) -> tuple[int, Any, http.client.HTTPResponse]:
    """``route`` with an ``authorization`` header per value, in that order."""
    method, path, body, _ = ROUTES[route]
    conn = http.client.HTTPConnection("127.0.0.1", server.http_port, timeout=10)
    try:
        conn.putrequest(method, path)
        for value in values:
            conn.putheader("authorization", value)
        data = b"" if body is None else json.dumps(body).encode()
        conn.putheader("content-type", "application/json")
        conn.putheader("content-length", str(len(data)))
        conn.endheaders(data)
        response = conn.getresponse()
        return response.status, json.loads(response.read()), response
    finally:
        conn.close()


@pytest.mark.parametrize("route", list(ROUTES))
def test_two_authorization_headers_are_a_400_on_every_route_whichever_comes_first(
    tokens: ServerProcess, route: str
) -> None:
    good = f"Bearer {ROUTES[route][3]}"
    for values in ((f"Bearer {BAD}", good), (good, f"Bearer {BAD}"), (good, good)):
        status, doc, response = send(tokens, route, *values)
        assert status == 400, (values, doc)  # one of the first two was a 200 on each route
        assert doc["error"]["code"] == "INVALID_ARGUMENT" and doc["error"]["message"] == MESSAGE
        assert response.getheader("www-authenticate") == CHALLENGE
    status, doc, _ = send(tokens, route, good)  # one is taken, as ever
    assert status == 200, doc


def test_two_authorization_headers_are_counted_as_an_invalid_token(tokens: ServerProcess) -> None:
    labels = {"route": "/v1/feature/join", "reason": "invalid"}
    before = counter(tokens, "featurestore_auth_failures", labels)
    send(tokens, "join", f"Bearer {READ}", f"Bearer {READ}")
    assert counter(tokens, "featurestore_auth_failures", labels) == before + 1


@pytest.mark.parametrize("method", ["Join", "Push"])
def test_two_authorization_metadata_are_invalid_argument_over_grpc(
    tokens: ServerProcess, method: str
) -> None:
    good = f"Bearer {READ if method == 'Join' else WRITE}"
    req = pb.JoinRequest(features=["user_profile:age"])
    req.entities.add(name="user_id").int64_values.values.extend([17])
    body = req.SerializeToString() if method == "Join" else b""
    with grpc.insecure_channel(tokens.grpc_target) as channel:
        call = channel.unary_unary(f"/featurestore.v1.FeatureService/{method}")
        for values in ((f"Bearer {BAD}", good), (good, f"Bearer {BAD}"), (good, good)):
            with pytest.raises(grpc.RpcError) as refused:  # the first was taken: (good, bad) was OK
                call(body, timeout=10, metadata=[("authorization", v) for v in values])
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, values
            assert refused.value.details() == MESSAGE
            assert ("www-authenticate", CHALLENGE) in refused.value.trailing_metadata()
        if method == "Join":
            call(body, timeout=10, metadata=[("authorization", good)])  # one is taken
