"""A request whose body is still arriving when a real server's drain ends (10 s after its
SIGTERM) is answered the API's JSON 503 and its connection closed: before, uvicorn
cancelled it and it got a plain-text 500 and an ERROR traceback each, counted nowhere
(review s55). Both ways a join is read: straight from the protocol (a content-length
body) and through ASGI (a chunked one)."""

from __future__ import annotations

import json
import signal
import socket
import time
from pathlib import Path

from tests.support import ServerProcess, wait_until

GUARD = 30.0  # seconds; only turns a hang into a failure
HEAD = "POST /v1/feature/join HTTP/1.1\r\nhost: t\r\ncontent-type: application/json\r\n"
SLOW_BODIES = {
    "direct": HEAD + 'content-length: 100\r\n\r\n{"entities"',
    "asgi": HEAD + 'transfer-encoding: chunked\r\n\r\n40\r\n{"entities"',
}


def read_all(sock: socket.socket) -> bytes:
    out = b""
    while chunk := sock.recv(65536):
        out += chunk
    return out


def test_a_body_still_arriving_when_the_drain_ends_gets_a_json_503_and_the_close(
    tmp_path: Path, test_repo: Path
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(
        f"registry: {{path: {tmp_path / 'registry'}}}\nstores: {{default: {{kind: memory}}, local: {{kind: memory}}}}\n"
        "http: {body_timeout_seconds: 60}\n"  # (the drain, not the body timeout, ends them)
    )
    server = ServerProcess(
        ["--config", str(config), "--definitions", str(test_repo)], log_path=tmp_path / "log"
    ).start()
    socks: dict[str, socket.socket] = {}
    try:
        for name, request in SLOW_BODIES.items():
            socks[name] = socket.create_connection(("127.0.0.1", server.http_port), timeout=GUARD)
            socks[name].sendall(request.encode())
        time.sleep(0.5)  # both requests read up to their bodies
        assert server.proc is not None
        server.proc.send_signal(signal.SIGTERM)
        answers = {name: read_all(sock) for name, sock in socks.items()}  # until the server closes
        assert server.proc.wait(GUARD) == 0
    finally:
        for sock in socks.values():
            sock.close()
        server.stop()
    for name, raw in answers.items():
        head, _, body = raw.partition(b"\r\n\r\n")
        lines = head.decode().split("\r\n")
        assert lines[0] == "HTTP/1.1 503 Service Unavailable", (name, raw)
        assert {"content-type: application/json", "retry-after: 1", "connection: close"} <= set(lines), raw
        error = json.loads(body)["error"]
        assert error["code"] == "UNAVAILABLE", (name, error)
        assert error["details"] == [{"reason": "stopping", "retry_after_seconds": 1}]
    wait_until(lambda: "stopped" in server.read_log(), 5, "the log's end")
    log = server.read_log()
    assert "Traceback" not in log and "Exception in" not in log, log
    assert "the drain ended with 2 request(s) still receiving their body: answered 503 and closed" in log
