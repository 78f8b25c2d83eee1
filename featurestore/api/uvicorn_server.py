"""uvicorn as a serving process runs it: on a socket of the process's own, without
uvicorn's signal handling (the process owns signals) and, with TLS, with the handshake
bounded.

uvicorn 0.54 passes no ``ssl_handshake_timeout`` to ``loop.create_server``, so uvloop's
60 s applied; and a connection's protocol (the connection guard, ``connections.py``)
exists only once the handshake has ended (uvloop calls ``connection_made`` then), so
until then none of the guard's limits hold. ``UvicornServer.startup`` is uvicorn's, for
the sockets given, with the timeout: ``tests/unit/test_tls_handshake.py`` fails when
uvicorn's changes, and shows a client that sends nothing closed after the timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import sys
from collections.abc import Iterator
from typing import Any

import uvicorn
from uvicorn.config import STARTUP_FAILURE

from featurestore.listener_config import TlsConfig


class UvicornServer(uvicorn.Server):
    """``handshake_timeout``: seconds a TLS handshake may take from accept (None: uvloop's 60)."""

    def __init__(self, config: uvicorn.Config, handshake_timeout: float | None = None) -> None:
        super().__init__(config)
        self.handshake_timeout = handshake_timeout

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        """uvicorn's ``Server.startup`` for sockets given (less its Windows socket sharing),
        with ``ssl_handshake_timeout``; plaintext, or with no timeout: uvicorn's own."""
        config = self.config
        if config.ssl is None or sockets is None or self.handshake_timeout is None:
            await super().startup(sockets)
            return
        await self.lifespan.startup()
        if self.lifespan.should_exit:
            sys.exit(STARTUP_FAILURE)

        def create_protocol(_loop: asyncio.AbstractEventLoop | None = None) -> asyncio.Protocol:
            return config.http_protocol_class(  # type: ignore[call-arg]
                config=config, server_state=self.server_state, app_state=self.lifespan.state, _loop=_loop
            )

        loop = asyncio.get_running_loop()
        self.servers = [
            await loop.create_server(
                create_protocol,
                sock=sock,
                ssl=config.ssl,
                backlog=config.backlog,
                ssl_handshake_timeout=self.handshake_timeout,
            )
            for sock in sockets
        ]
        self.started = True


def uvicorn_tls(tls: TlsConfig) -> dict[str, Any]:
    """uvicorn's TLS settings for the listeners' ``tls`` section."""
    if not tls.enabled:
        return {}
    settings: dict[str, Any] = {"ssl_certfile": tls.cert_file, "ssl_keyfile": tls.key_file}
    if tls.client_ca_file:
        settings.update(ssl_ca_certs=tls.client_ca_file, ssl_cert_reqs=ssl.CERT_REQUIRED)
    return settings


async def start_uvicorn(server: uvicorn.Server, sock: socket.socket, name: str) -> asyncio.Task[None]:
    """Serve on ``sock``; returns once the server accepts (or raises its startup error)."""
    task = asyncio.create_task(server.serve(sockets=[sock]), name=name)
    # uvicorn exposes no startup event, only the flag.
    while not server.started and not task.done():  # noqa: ASYNC110
        await asyncio.sleep(0.01)
    if task.done():
        await task  # surfaces the bind/startup error
    return task
