"""The health check (``python -m featurestore.cli.health``, the image's HEALTHCHECK and
compose's checks) asks the local server directly: Docker hands containers the client's
``HTTP_PROXY``, and urllib's default opener would send even 127.0.0.1 to that proxy."""

from __future__ import annotations

import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from featurestore.cli import health
from tests.security import make_certs
from tests.support import free_port


class Ready(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200 if self.path in ("/readyz", "/metrics") else 404)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *_: object) -> None:
        pass


def answering(context: ssl.SSLContext | None = None) -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Ready)
    if context is not None:
        server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def unreachable_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    proxy = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy"):
        monkeypatch.setenv(name, proxy)
    for name in ("NO_PROXY", "no_proxy", "FEATURESTORE_CONFIG"):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.usefixtures("unreachable_proxy")
def test_the_health_check_asks_the_local_server_past_an_http_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    for port in answering():
        monkeypatch.setenv("FEATURESTORE_HTTP__PORT", str(port))
        assert health.main(["--timeout", "5"]) == 0
        assert health.main(["--url", f"http://127.0.0.1:{port}/metrics", "--timeout", "5"]) == 0


@pytest.mark.usefixtures("unreachable_proxy")
def test_the_health_check_asks_a_tls_serving_port_past_an_https_proxy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    certs = make_certs(tmp_path)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certs.cert, certs.key)
    for port in answering(context):
        monkeypatch.setenv("FEATURESTORE_HTTP__PORT", str(port))
        monkeypatch.setenv("FEATURESTORE_TLS__CERT_FILE", str(certs.cert))
        monkeypatch.setenv("FEATURESTORE_TLS__KEY_FILE", str(certs.key))
        assert health.main(["--timeout", "5"]) == 0
