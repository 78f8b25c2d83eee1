"""With TLS, the serving port bounds the handshake by ``http.header_timeout_seconds``
(featurestore/api/uvicorn_server.py): a client that connects and sends nothing is closed
then, not after uvloop's 60 s, though the connection guard has not seen it (its protocol
exists only once the handshake ends). And the copy of uvicorn's startup that passes the
timeout is still uvicorn's."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import inspect
import ssl
import time
import urllib.request
from pathlib import Path

import uvicorn
import uvloop

from featurestore.api.uvicorn_server import UvicornServer
from featurestore.config import TlsConfig
from tests.security import make_certs
from tests.support import one_view_listener_config

HEADER_TIMEOUT = 0.5

# sha256 of uvicorn 0.54's Server.startup, whose branch for sockets given
# UvicornServer.startup copies with ssl_handshake_timeout: when uvicorn changes it,
# compare the two again and record the new digest here.
STARTUP_SHA256 = "2aa1d70a244bfcf21a1ae57e0152f9c20e40f756ffc328ccc58037f6ae8e2dfc"


def test_the_uvicorn_startup_the_server_copies_is_unchanged() -> None:
    source = inspect.getsource(uvicorn.Server.startup)
    assert hashlib.sha256(source.encode()).hexdigest() == STARTUP_SHA256, "uvicorn changed startup: see above"
    # what the copy reads and sets, as uvicorn's own startup and shutdown use them
    config = uvicorn.Config(lambda *_: None, lifespan="off", loop="none", ssl_certfile=None)
    config.load()
    server = UvicornServer(config, handshake_timeout=1.0)
    for name in ("http_protocol_class", "ssl", "backlog"):
        assert hasattr(config, name), name
    assert hasattr(server, "server_state") and hasattr(server, "started")
    assert "for server in self.servers:" in inspect.getsource(uvicorn.Server.shutdown)
    assert "self.lifespan = config.lifespan_class(config)" in inspect.getsource(uvicorn.Server._serve)
    lifespan = config.lifespan_class(config)
    assert hasattr(lifespan, "state") and hasattr(lifespan, "should_exit")


def test_a_tls_client_that_sends_nothing_is_closed_after_the_header_timeout(tmp_path: Path) -> None:
    from featurestore.process import Listeners
    from featurestore.runtime import build_runtime

    certs = make_certs(tmp_path / "certs")

    async def run() -> tuple[bytes, float, int]:
        config = await one_view_listener_config(tmp_path)
        config = config.model_copy(
            update={
                "http": dataclasses.replace(config.http, header_timeout_seconds=HEADER_TIMEOUT),
                "tls": TlsConfig(cert_file=str(certs.cert), key_file=str(certs.key)),
            }
        )
        rt = await build_runtime(config)
        listeners = Listeners(rt)
        try:
            await listeners.start()
            reader, writer = await asyncio.open_connection("127.0.0.1", config.http.port)
            started = time.monotonic()
            try:  # uvloop aborts the handshake: an EOF or a reset
                got = await asyncio.wait_for(reader.read(), 10 * HEADER_TIMEOUT)
            except ConnectionResetError:
                got = b""
            elapsed = time.monotonic() - started
            writer.close()
            status = await asyncio.to_thread(get, f"https://127.0.0.1:{config.http.port}/healthz", certs.ca)
        finally:
            await listeners.drain()
            await rt.close()
        return got, elapsed, status

    got, elapsed, status = uvloop.run(run())  # the serving processes' loop
    assert got == b"" and HEADER_TIMEOUT * 0.8 < elapsed < 5 * HEADER_TIMEOUT, elapsed
    assert status == 200  # a client that does the handshake is served


def get(url: str, ca: Path) -> int:
    with urllib.request.urlopen(url, timeout=5, context=ssl.create_default_context(cafile=str(ca))) as r:
        status: int = r.status
    return status
