"""The HTTP clients go through the proxy the environment names (HTTP_PROXY and the rest,
as httpx reads them) and around it for the hosts NO_PROXY names: the blocking client as
well as the asyncio one, though it gives httpx its own (deadline) transport. A real
forwarding proxy in front of a real server."""

from __future__ import annotations

import asyncio
import http.client
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from featurestore.client import AsyncFeatureClient, FeatureClient, JoinResult
from tests.integration.test_derived_serving import demo_definitions, start_server
from tests.support import ServerProcess

PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")


class ForwardingProxy(ThreadingHTTPServer):
    """An HTTP forward proxy: takes absolute-form requests, sends each on to its origin
    and its answer back, and records the URLs it forwarded."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Forward)
        self.forwarded: list[str] = []
        self.url = f"http://127.0.0.1:{self.server_address[1]}"
        threading.Thread(target=self.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.shutdown()
        self.server_close()


class _Forward(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: ForwardingProxy

    def do_POST(self) -> None:
        url = urlsplit(self.path)
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        headers = {
            k: v for k, v in self.headers.items() if k.lower() not in ("proxy-connection", "connection")
        }
        origin = http.client.HTTPConnection(url.hostname or "", url.port, timeout=10)
        try:
            origin.request("POST", url.path, body=body, headers=headers)
            answer = origin.getresponse()
            content = answer.read()
        finally:
            origin.close()
        self.server.forwarded.append(self.path)
        self.send_response(answer.status)
        for name, value in answer.getheaders():
            if name.lower() not in ("content-length", "connection", "transfer-encoding"):
                self.send_header(name, value)
        self.send_header("content-length", str(len(content)))
        self.end_headers()
        self.wfile.write(content)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def server(demo_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    work = tmp_path_factory.mktemp("client-proxy")
    proc = start_server(work, demo_dir, demo_definitions(demo_dir, work / "features.yaml"))
    yield proc
    proc.stop()


@pytest.fixture
def proxy(monkeypatch: pytest.MonkeyPatch) -> Iterator[ForwardingProxy]:
    """A running proxy; every proxy variable of the environment cleared, HTTP_PROXY set to it."""
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    p = ForwardingProxy()
    monkeypatch.setenv("HTTP_PROXY", p.url)
    yield p
    p.stop()


def join(kind: str, url: str) -> JoinResult:
    entities, features = {"user_id": [17, -1]}, ["user_profile:age"]
    if kind == "blocking":
        with FeatureClient(url, retries=0, deadline=5) as client:
            return client.join(entities, features)

    async def run() -> JoinResult:
        async with AsyncFeatureClient(url, retries=0, deadline=5) as client:
            return await client.join(entities, features)

    return asyncio.run(run())


@pytest.mark.parametrize("kind", ["blocking", "asyncio"])
def test_a_join_goes_through_the_proxy_http_proxy_names(
    server: ServerProcess, proxy: ForwardingProxy, kind: str
) -> None:
    result = join(kind, server.url)
    assert result["user_id"].values == [17, -1]
    assert proxy.forwarded == [f"{server.url}/v1/feature/join"]


@pytest.mark.parametrize("kind", ["blocking", "asyncio"])
def test_a_join_to_a_host_no_proxy_names_goes_around_the_proxy(
    server: ServerProcess, proxy: ForwardingProxy, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    host = urlsplit(server.url).hostname or ""
    monkeypatch.setenv("NO_PROXY", f"example.com, {host}")
    result = join(kind, server.url)
    assert result["user_id"].values == [17, -1]
    assert proxy.forwarded == []
