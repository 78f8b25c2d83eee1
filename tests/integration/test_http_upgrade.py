"""Requests that ask to switch protocols (``Upgrade: h2c`` as ``curl --http2`` sends on
plain HTTP, ``Upgrade: websocket``) are answered as HTTP/1.1 on a real server process,
their body read as their body whether it comes with the head, later, or chunked; the
requests pipelined after them are answered in order, and no byte of a body is ever run
as a request of its own (review s56, finding 1: httptools stopped at the head, the body
was lost, and a late body was parsed as the next request). featurestore/api/upgrades.py."""

from __future__ import annotations

import contextlib
import json
import re
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.test_hostile_clients import GUARD, connect, serve, status_of, until_closed
from tests.support import ServerProcess

JOIN = b'{"entities":{"user_id":[17]},"features":["user_profile:age"]}'
H2C = b"connection: Upgrade, HTTP2-Settings\r\nupgrade: h2c\r\nhttp2-settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n"
# What a request smuggled in a body would ask for: answered 200 only if run as a request.
INNER = b"GET /v1/registry HTTP/1.1\r\nhost: t\r\n\r\n"


@pytest.fixture(scope="module")
def served(test_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = serve(tmp_path_factory.mktemp("upgrade"), test_repo, {"keep_alive_seconds": 5})
    yield proc
    proc.stop()


def head(path: bytes, length: int | None, extra: bytes = H2C) -> bytes:
    framing = b"transfer-encoding: chunked\r\n" if length is None else b"content-length: %d\r\n" % length
    return b"POST %s HTTP/1.1\r\nhost: t\r\ncontent-type: application/json\r\n%s%s\r\n" % (
        path,
        framing,
        extra,
    )


def chunked(body: bytes) -> bytes:
    half = len(body) // 2
    return b"%x\r\n%s\r\n%x\r\n%s\r\n0\r\n\r\n" % (half, body[:half], len(body) - half, body[half:])


def responses(sock: socket.socket, count: int) -> list[tuple[int, bytes]]:
    """The next ``count`` responses on ``sock`` (status, body), read by their content-length."""
    buffer, out = b"", list[tuple[int, bytes]]()
    while len(out) < count:
        m = re.match(rb"HTTP/1\.1 (\d{3}) [^\r]*\r\n(.*?)\r\n\r\n", buffer, re.S)
        length = m and re.search(rb"(?im)^content-length: *(\d+)", m.group(2))
        if m and length and len(buffer) >= m.end() + int(length.group(1)):
            end = m.end() + int(length.group(1))
            out.append((int(m.group(1)), buffer[m.end() : end]))
            buffer = buffer[end:]
            continue
        chunk = sock.recv(65536)
        assert chunk, f"the connection closed after {out}; unparsed {buffer[:300]!r}"
        buffer += chunk
    return out


def nothing_more(sock: socket.socket, seconds: float = 0.5) -> None:
    sock.settimeout(seconds)
    try:
        extra = sock.recv(65536)
    except TimeoutError:
        extra = b""
    finally:
        sock.settimeout(GUARD)
    assert extra == b"", f"an answer nobody asked for: {extra[:300]!r}"


def age_of(body: bytes) -> object:
    return json.loads(body)["results"][1]["values"][0]


def test_a_join_sent_by_curl_http2_on_plain_http_is_answered_with_its_body(served: ServerProcess) -> None:
    out = subprocess.run(
        ["curl", "-s", "--http2", "-w", "\n%{http_code} %{http_version}", "-X", "POST",
         "-H", "content-type: application/json", "--data-binary", JOIN, served.url + "/v1/feature/join"],
        capture_output=True, timeout=GUARD, check=True,
    ).stdout  # fmt: skip
    body, _, status = out.rpartition(b"\n")
    assert status == b"200 1.1", out[:300]  # refused as "empty body" before the fix
    assert json.loads(body)["metadata"]["feature_names"] == ["user_id", "age"]


@pytest.mark.parametrize("path", [b"/v1/feature/join", b"/v1/feature/join?via=asgi"])
def test_a_body_arriving_after_its_upgrade_head_is_read_as_that_requests_body(
    served: ServerProcess, path: bytes
) -> None:
    sock = connect(served)
    sock.sendall(head(path, len(JOIN)))
    time.sleep(0.3)  # the body in segments of its own, as a slow client or a proxy sends it
    sock.sendall(JOIN[:20])
    time.sleep(0.1)
    sock.sendall(JOIN[20:])
    [(status, body)] = responses(sock, 1)
    assert status == 200, body
    nothing_more(sock)
    sock.close()


def test_a_late_body_that_looks_like_a_request_is_never_run_as_one(served: ServerProcess) -> None:
    for path in (b"/v1/feature/push", b"/v1/feature/join", b"/v1/feature/join?via=asgi"):
        sock = connect(served)
        sock.sendall(head(path, len(INNER)))
        time.sleep(0.3)
        sock.sendall(INNER)
        [(status, body)] = responses(sock, 1)
        assert status == 400 and b"malformed JSON" in body, (path, body)  # the body, as JSON
        nothing_more(sock)  # before the fix: the registry's 200 came next
        sock.sendall(head(b"/v1/feature/join", len(JOIN), b"") + JOIN)  # and the connection serves on
        assert [s for s, _ in responses(sock, 1)] == [200]
        sock.close()


def test_a_chunked_body_after_an_upgrade_head_is_read_in_its_chunks(served: ServerProcess) -> None:
    sock = connect(served)
    sock.sendall(head(b"/v1/feature/join", None))
    time.sleep(0.2)
    sock.sendall(chunked(JOIN))
    [(status, body)] = responses(sock, 1)
    assert status == 200 and age_of(body) is not None, body
    sock.close()


def test_requests_pipelined_behind_upgrade_requests_are_each_answered_in_order(served: ServerProcess) -> None:
    sock = connect(served)
    plain = head(b"/v1/feature/join", len(JOIN), b"") + JOIN
    websocket = b"GET /healthz HTTP/1.1\r\nhost: t\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n"
    sock.sendall(  # one write: before the fix, everything after the first head was dropped
        head(b"/v1/feature/join", len(JOIN)) + JOIN + plain + websocket
        + head(b"/v1/feature/join", None) + chunked(JOIN) + b"GET /healthz HTTP/1.1\r\nhost: t\r\n\r\n"
    )  # fmt: skip
    answers = responses(sock, 5)
    assert [s for s, _ in answers] == [200] * 5, answers
    assert age_of(answers[0][1]) == age_of(answers[1][1]) == age_of(answers[3][1])
    assert answers[2][1] == answers[4][1] == b'{"status":"ok"}'
    nothing_more(sock)
    sock.close()


def test_a_broken_chunk_after_an_upgrade_head_is_a_400_and_nothing_after_it_is_parsed(
    served: ServerProcess,
) -> None:
    sock = connect(served)
    sock.sendall(head(b"/v1/feature/join", None) + b"zz\r\n" + INNER)
    received = until_closed(sock)
    assert status_of(received) == 400 and b"malformed HTTP/1.1 request" in received, received[:300]
    assert len(re.findall(rb"HTTP/1\.1 \d{3} ", received)) == 1, received[:300]


def test_a_connect_is_answered_then_the_connection_closed_reading_nothing_after_it(
    served: ServerProcess,
) -> None:
    sock = connect(served)
    sock.sendall(b"CONNECT /v1/feature/join HTTP/1.1\r\nhost: t\r\n\r\n")
    time.sleep(0.3)
    with contextlib.suppress(OSError):  # (the server may have closed already)
        sock.sendall(INNER)  # what the client meant for the tunnel: run as a request before
    received = until_closed(sock)
    assert re.findall(rb"HTTP/1\.1 (\d{3}) ", received) == [b"405"], received[:300]


def test_upgrade_requests_put_no_warning_in_the_log(served: ServerProcess) -> None:
    """uvicorn's own "Unsupported upgrade request." and WebSocket-library warnings are
    never reached (the guard reads such requests on as HTTP/1.1), so the log filter no
    longer lists them (client_mistakes.py): a line here means one came back."""
    assert served.log_path is not None
    sock = connect(served)
    websocket = b"GET /healthz HTTP/1.1\r\nhost: t\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n"
    sock.sendall(head(b"/v1/feature/join", len(JOIN)) + JOIN + websocket)
    assert [s for s, _ in responses(sock, 2)] == [200, 200]
    sock.close()
    assert served.answers()  # (its log written up to here)
    log = served.log_path.read_text()
    assert "upgrade" not in log.lower() and "websocket" not in log.lower(), log[-2000:]
