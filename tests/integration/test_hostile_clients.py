"""Slow, idle and oversized HTTP clients cannot hold a real server process: each limit
closes the connection (raw sockets, waiting on the close), counts it by reason, and the
server keeps answering everyone else meanwhile. Also the hostile bodies of
tests/unit/test_hostile_bodies.py, over a real connection. gRPC: test_hostile_grpc_clients.py."""

from __future__ import annotations

import contextlib
import json
import re
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support import ServerProcess, http_get, http_post, wait_until

# Limits of the server under test: short, so that each test waits about a second.
LIMITS = {
    "keep_alive_seconds": 1,
    "header_timeout_seconds": 1,
    "body_timeout_seconds": 1,
    "write_timeout_seconds": 1,
    "max_header_bytes": 4096,
    "max_connections": 16,
}
# Seconds a wait may take before the test fails: only turns a connection the server
# never closes (the bug) into a failure; a passing run waits about one limit.
GUARD = 30.0

JOIN = b'{"entities":{"user_id":[1]},"features":["user_profile:age"]}'


def serve(work: Path, test_repo: Path, limits: dict[str, int]) -> ServerProcess:
    config = work / "config.yaml"
    config.write_text(
        f"registry: {{path: {work / 'registry'}}}\n"
        "stores: {default: {kind: memory}, local: {kind: memory}}\n"
        f"http: {json.dumps(limits)}\n"
    )
    return ServerProcess(
        ["--config", str(config), "--definitions", str(test_repo)], log_path=work / "server.log"
    ).start()


@pytest.fixture(scope="module")
def guarded(test_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = serve(tmp_path_factory.mktemp("hostile-http"), test_repo, LIMITS)
    yield proc
    proc.stop()


@pytest.fixture
def capped(test_repo: Path, tmp_path: Path) -> Iterator[ServerProcess]:
    """``LIMITS``' connection cap without their 1 s idle limits: connections held idle stay
    open however long the loaded CI machine stalls the test (the cap is what it is about)."""
    proc = serve(tmp_path, test_repo, {**LIMITS, "keep_alive_seconds": 30, "header_timeout_seconds": 30})
    yield proc
    proc.stop()


def connect(server: ServerProcess) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.http_port), timeout=GUARD)
    sock.settimeout(GUARD)
    return sock


def request(path: str = "/v1/feature/join", body: bytes = JOIN, extra: bytes = b"") -> bytes:
    head = b"POST %s HTTP/1.1\r\nhost: t\r\ncontent-type: application/json\r\ncontent-length: %d\r\n%s\r\n"
    return head % (path.encode(), len(body), extra) + body


def until_closed(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (EOF or reset)."""
    received = b""
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except ConnectionResetError:
        pass
    except TimeoutError:
        pytest.fail(f"the server did not close the connection within {GUARD} s; got {received[:200]!r}")
    finally:
        sock.close()
    return received


def status_of(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


def closed(server: ServerProcess, reason: str) -> float:
    return counter(server, "featurestore_http_connections_closed", {"reason": reason})


def counter(server: ServerProcess, family_name: str, labels: dict[str, str]) -> float:
    status, raw = http_get(server.url + "/metrics")
    assert status == 200, raw
    for family in text_string_to_metric_families(raw.decode()):
        if family.name == family_name:
            for sample in family.samples:
                if sample.name.endswith("_total") and sample.labels == labels:
                    return sample.value
    return 0.0


def assert_others_are_answered(server: ServerProcess) -> None:
    status, raw, _ = http_post(server.url + "/v1/feature/join", JOIN)
    assert status == 200, raw


# -- timeouts --------------------------------------------------------------------------


def test_a_connection_that_never_sends_a_request_is_closed(guarded: ServerProcess) -> None:
    before = closed(guarded, "idle")
    sock = connect(guarded)
    assert_others_are_answered(guarded)
    assert until_closed(sock) == b""
    assert closed(guarded, "idle") == before + 1


def test_an_idle_keep_alive_connection_is_closed_after_its_response(guarded: ServerProcess) -> None:
    before = closed(guarded, "idle")
    sock = connect(guarded)
    sock.sendall(request())
    received = until_closed(sock)
    assert status_of(received) == 200 and b"connection: close" not in received.lower()
    assert closed(guarded, "idle") == before + 1


def test_half_a_head_gets_a_408_and_the_connection_closed(guarded: ServerProcess) -> None:
    before = closed(guarded, "header_timeout")
    sock = connect(guarded)
    sock.sendall(request()[:40])
    assert_others_are_answered(guarded)
    received = until_closed(sock)
    assert status_of(received) == 408 and b"request headers not received" in received
    assert closed(guarded, "header_timeout") == before + 1


def test_a_head_without_its_body_is_closed(guarded: ServerProcess) -> None:
    before = closed(guarded, "body_timeout")
    sock = connect(guarded)
    sock.sendall(request()[:-10])
    assert_others_are_answered(guarded)
    assert until_closed(sock) == b""
    assert closed(guarded, "body_timeout") == before + 1


def test_a_connection_answered_before_its_body_ended_is_closed_once_idle(guarded: ServerProcess) -> None:
    """The join's 405 does not read the body; the body still arrives, then nothing."""
    before = closed(guarded, "idle")
    sock = connect(guarded)
    sock.sendall(request().replace(b"POST", b"PUT", 1))
    received = until_closed(sock)
    assert status_of(received) == 405 and b"allow: POST" in received
    assert closed(guarded, "idle") == before + 1


def test_empty_lines_after_a_response_do_not_hold_the_connection_open(guarded: ServerProcess) -> None:
    """Line breaks before a request line are skipped by the parser (no request begins),
    so uvicorn's keep-alive clock stops and nothing would ever close the connection."""
    sock = connect(guarded)
    sock.sendall(request())
    sock.sendall(b"\r\n")
    received = until_closed(sock)
    assert status_of(received) == 200


# ~13 MB of responses: more than the kernel's socket buffers hold (4 MB send buffer at
# most with Linux's default tcp_wmem), so the transport's buffer fills. GET: through
# ASGI (9 KB each); joins: through the join's own cycle (api/join_cycle.py; 2,000 keys
# not found, ~50 KB each).
_NOT_FOUND = b",".join(b"%d" % (10**6 + i) for i in range(2000))
UNREAD = {
    "asgi": b"GET /openapi.json HTTP/1.1\r\nhost: t\r\n\r\n" * 1500,
    "join": request(body=b'{"entities":{"user_id":[%s]},"features":["user_profile:age"]}' % _NOT_FOUND) * 300,
}


@pytest.mark.parametrize("requests", UNREAD.values(), ids=UNREAD.keys())
def test_a_client_that_does_not_read_its_responses_is_cut_off(
    guarded: ServerProcess, requests: bytes
) -> None:
    """Pipelined requests whose responses the client never reads: the server's send
    buffer fills, uvicorn waits for it to drain, and a close() would wait for ever too;
    after the write timeout the connection is aborted."""
    before = closed(guarded, "write_timeout")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: a small window
    sock.settimeout(GUARD)
    sock.connect(("127.0.0.1", guarded.http_port))
    sock.sendall(requests)
    wait_until(
        lambda: closed(guarded, "write_timeout") == before + 1,
        GUARD,
        "the connection aborted on its write timeout",
        interval=0.1,
    )
    assert_others_are_answered(guarded)
    received = until_closed(sock)  # what was in flight, then the reset
    assert status_of(received) == 200


@pytest.mark.parametrize(
    "head",
    [
        b"POST /v1/feature/join HTTP/1.1\r\nhost: t\r\ncontent-length: -5\r\n\r\n",
        b"POST /v1/feature/join HTTP/1.1\r\nhost: t\r\ntransfer-encoding: chunked\r\n\r\nzz\r\n",
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    ],
    ids=["negative-length", "broken-chunks", "http2-preface"],
)
def test_bytes_that_are_not_http_get_a_json_400_counted_not_logged(
    guarded: ServerProcess, head: bytes
) -> None:
    before = closed(guarded, "malformed")
    sock = connect(guarded)
    sock.sendall(head)
    received = until_closed(sock)
    assert status_of(received) == 400 and b"content-type: application/json" in received
    error = json.loads(received.split(b"\r\n\r\n", 1)[1])["error"]
    assert error["code"] == "INVALID_ARGUMENT" and "malformed HTTP/1.1 request" in error["message"]
    assert closed(guarded, "malformed") == before + 1
    assert_others_are_answered(guarded)


def test_a_pipelined_push_and_join_are_answered_before_the_broken_bytes_after_them(
    guarded: ServerProcess,
) -> None:
    row = {
        "user_id": [960_001], "age": [77], "tenure_days": [1], "num_devices": [1], "country": ["DE"],
        "plan_tier": ["pro"], "preferred_language": ["de"], "lifetime_value": [1.0], "credit_score": [0.5],
    }  # fmt: skip
    push = json.dumps({"feature_view": "user_profile", "rows": row}).encode()
    join = b'{"entities":{"user_id":[960001]},"features":["user_profile:age"]}'
    sock = connect(guarded)
    sock.sendall(request("/v1/feature/push", push) + request(body=join) + b"GARBAGE\r\n\r\n")  # one write
    received = until_closed(sock)
    assert re.findall(rb"HTTP/1\.1 (\d{3}) ", received) == [b"200", b"200", b"400"], received[:300]
    assert b'"values":[77]' in received  # the push was applied, and said so, before the join read it
    assert b'"malformed HTTP/1.1 request' in received


def test_a_websocket_upgrade_is_answered_as_plain_http_without_log_lines(guarded: ServerProcess) -> None:
    """No WARNING per request, and none advising to install a WebSocket library."""
    sock = connect(guarded)
    # (bodies and pipelining after an upgrade header: test_http_upgrade.py)
    sock.sendall(
        b"GET /healthz HTTP/1.1\r\nhost: t\r\nupgrade: websocket\r\nconnection: upgrade, close\r\n\r\n"
    )
    assert status_of(until_closed(sock)) == 200
    assert_others_are_answered(guarded)
    assert guarded.log_path is not None
    log = guarded.log_path.read_text()
    assert "upgrade request" not in log and "WebSocket library" not in log
    assert "Invalid HTTP request" not in log


# -- sizes and counts ------------------------------------------------------------------


@pytest.mark.parametrize("size", [5000, 1 << 20])
def test_a_head_over_the_limit_is_a_431(guarded: ServerProcess, size: int) -> None:
    before = closed(guarded, "header_too_large")
    sock = connect(guarded)
    # closed while the megabyte is still being sent is what a 431 may look like to a client
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        sock.sendall(request(extra=b"x-big: " + b"a" * size + b"\r\n"))
    received = until_closed(sock)
    assert received == b"" or (status_of(received) == 431 and b"exceed 4096 bytes" in received)
    assert closed(guarded, "header_too_large") == before + 1
    assert_others_are_answered(guarded)


def test_a_head_within_the_limit_is_served(guarded: ServerProcess) -> None:
    sock = connect(guarded)
    sock.sendall(request(extra=b"x-big: " + b"a" * 3000 + b"\r\nconnection: close\r\n"))
    assert status_of(until_closed(sock)) == 200


def test_connections_over_the_limit_are_answered_503_and_closed(capped: ServerProcess) -> None:
    before = closed(capped, "max_connections")
    shed = {"api": "http", "reason": "max_connections"}
    shed_before = counter(capped, "featurestore_requests_shed", shed)
    held = [connect(capped) for _ in range(LIMITS["max_connections"])]
    try:
        extra = connect(capped)
        extra.sendall(request())
        received = until_closed(extra)
        assert status_of(received) == 503 and b"UNAVAILABLE" in received
        # refused for capacity, as a shed join: says when to come back, counted as shed
        head, _, body = received.partition(b"\r\n\r\n")
        assert b"\r\nretry-after: 1\r\n" in head.lower() + b"\r\n"
        assert json.loads(body)["error"]["details"] == [
            {"reason": "max_connections", "retry_after_seconds": 1}
        ]
    finally:
        for sock in held:
            sock.close()
    wait_until(
        lambda: http_post(capped.url + "/v1/feature/join", JOIN)[0] == 200,
        GUARD,
        "a join answered once the held connections are gone",
        interval=0.1,
    )
    assert closed(capped, "max_connections") == before + 1
    assert counter(capped, "featurestore_requests_shed", shed) == shed_before + 1


# -- bodies over a real connection -------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/feature/join", b'{"entities":{"user_id":' + b"[" * 10_000 + b"]" * 10_000 + b"}}"),
        (
            "/v1/feature/push",
            b'{"feature_view":"merchant","rows":{"x":' + b"[" * 10_000 + b"]" * 10_000 + b"}}",
        ),
        ("/v1/feature/join", b'{"entities":{"user_id":[1]},"features":["user_profile:\xff"]}'),
        ("/v1/feature/push", b'{"feature_view":"\xc3\x28","rows":{"a":[1],"b":[2]}}'),
    ],
    ids=["deep-join", "deep-push", "utf8-join", "utf8-push"],
)
def test_hostile_bodies_are_400s_on_a_real_server(guarded: ServerProcess, path: str, body: bytes) -> None:
    status, raw, headers = http_post(guarded.url + path, body)
    assert status == 400 and headers["content-type"] == "application/json"
    error = json.loads(raw)["error"]
    assert error["code"] == "INVALID_ARGUMENT"
    assert "got `array`" in error["message"] or "not valid UTF-8" in error["message"]


def test_the_admin_port_closes_a_connection_that_sends_nothing(
    test_repo: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """/healthz, /readyz and /metrics on http.admin_port are under the same limits."""
    from tests.security import SecureServer

    work = tmp_path_factory.mktemp("hostile-admin")
    config = work / "config.yaml"
    config.write_text(
        f"registry: {{path: {work / 'registry'}}}\n"
        "stores: {default: {kind: memory}, local: {kind: memory}}\n"
        f"http: {json.dumps(LIMITS)}\n"
    )
    server = SecureServer(["--config", str(config), "--definitions", str(test_repo)], {}, work / "server.log")
    server.start()
    try:
        sock = socket.create_connection(("127.0.0.1", server.admin_port), timeout=GUARD)
        sock.settimeout(GUARD)
        assert until_closed(sock) == b""
        status, _ = http_get(server.admin_url + "/readyz")
        assert status == 200
    finally:
        server.stop()
