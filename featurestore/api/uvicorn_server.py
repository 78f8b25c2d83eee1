"""uvicorn as a serving process runs it: on a socket of the process's own, without
uvicorn's signal handling (the process owns signals) and, with TLS, with the handshake
bounded.

uvicorn 0.54 passes no ``ssl_handshake_timeout`` to ``loop.create_server``, so uvloop's
60 s applied; and a connection's protocol (the connection guard, ``connections.py``)
exists only once the handshake has ended (uvloop calls ``connection_made`` then), so
until then none of the guard's limits hold. ``UvicornServer.startup`` is uvicorn's, for
the sockets given, with the timeout: ``tests/unit/test_tls_handshake.py`` fails when
uvicorn's changes, and shows a client that sends nothing closed after the timeout.

The drain's end. uvicorn's ``shutdown`` waits up to ``timeout_graceful_shutdown`` for the
requests in flight, then cancels their tasks: a request whose body was still arriving got
its plain-text 500 and an ERROR traceback each, counted nowhere. ``UvicornServer`` answers
those itself ``CUT_MARGIN_SECONDS`` before that bound (``cut_unfinished_bodies``): the
API's JSON 503 (``join_cycle.stopped_answer``) and the close, which the request's cycle
sees as its client leaving (counted CANCELLED). uvicorn still cancels what runs after the
bound (a join with a deadline past the drain): the join answers that 503 too, from the
direct cycle (``join_cycle.JoinCycle``) or through ASGI (``HttpApi``, a chunked body...)
instead of uvicorn's 500. This relies on uvicorn's
``_wait_tasks_to_complete`` and a connection's ``cycle`` (its ``more_body``,
``response_started``, ``disconnected``, ``message_event``):
``tests/integration/test_lifecycle_drain.py`` fails when they change.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
import sys
from collections.abc import Iterable, Iterator
from typing import Any

import uvicorn
from uvicorn.config import STARTUP_FAILURE

from featurestore.api.join_cycle import caller_left, stopped_answer
from featurestore.listener_config import TlsConfig

log = logging.getLogger(__name__)

# How long before uvicorn's graceful timeout the requests whose body still arrives are
# answered: their cycles end within a loop iteration of the close (the tasks uvicorn would
# cancel are gone by its timeout); 0.5 s of a 10 s drain leaves the bodies 9.5 s.
CUT_MARGIN_SECONDS = 0.5


class UvicornServer(uvicorn.Server):
    """``handshake_timeout``: seconds a TLS handshake may take from accept (None: uvloop's 60)."""

    def __init__(self, config: uvicorn.Config, handshake_timeout: float | None = None) -> None:
        super().__init__(config)
        self.handshake_timeout = handshake_timeout

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    async def _wait_tasks_to_complete(self) -> None:
        """uvicorn's wait for the requests in flight at the stop, their unfinished bodies
        cut ``CUT_MARGIN_SECONDS`` before its bound (the module docstring)."""
        bound = self.config.timeout_graceful_shutdown
        if bound is None:
            await super()._wait_tasks_to_complete()
            return
        try:
            await asyncio.wait_for(super()._wait_tasks_to_complete(), max(0.0, bound - CUT_MARGIN_SECONDS))
            return
        except TimeoutError:
            cut_unfinished_bodies(self.server_state.connections, self.server_state.default_headers)
        await super()._wait_tasks_to_complete()  # (what still runs: cancelled at uvicorn's bound)

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


def cut_unfinished_bodies(connections: Iterable[Any], default_headers: list[tuple[bytes, bytes]]) -> int:
    """Answer every request whose body is still arriving ``join_cycle.stopped_answer`` and
    close its connection; the request's cycle sees its client gone (its app counts it
    CANCELLED). The number cut."""
    cut = 0
    for conn in list(connections):
        cycle = getattr(conn, "cycle", None)
        if cycle is None or cycle.response_started or cycle.disconnected or not cycle.more_body:
            continue
        cycle.disconnected = True  # its app answers nothing more
        cycle.message_event.set()
        caller_left(conn)  # (none runs while its body arrives)
        conn.transport.write(stopped_answer(default_headers))
        conn.transport.close()
        cut += 1
    if cut:
        log.info(
            "the drain ended with %d request(s) still receiving their body: answered 503 and closed", cut
        )
    return cut


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
