"""HTTP connection limits: what uvicorn's httptools protocol leaves unbounded.

uvicorn closes an idle keep-alive connection only once it has answered a request on it
(``timeout_keep_alive``): a connection that never sends a request, sends half of its
headers, or its headers and never the body, stays open for ever; and httptools takes
headers of any size. :class:`GuardedHttpProtocol` (a subclass of uvicorn's
``HttpToolsProtocol``) bounds, per connection:

* idle time after a response (``keep_alive``; reason ``idle``);
* a header timeout, from accept (the first request; with TLS, the handshake's end:
  ``uvicorn_server.py``) or from a request's first byte (the next ones) to its last header:
  one that sent nothing is closed (``idle``), part of a head: 408 and closed (``header_timeout``);
* a body timeout, from the last header to the end of the body (``body_timeout``);
* a write timeout: a response the client does not read (the transport's buffer stays
  over its high-water mark, uvicorn waits in ``drain()``) for this long aborts the
  connection (``write_timeout``); a ``close()`` alone would wait for the flush for ever;
* the head's size, request line and headers: 431 and close (``header_too_large``);
* the open connections per worker: beyond the maximum, the connection's request is
  answered 503 with ``Retry-After`` and the connection closed (``max_connections``;
  counted as shed too, ``featurestore_requests_shed_total{reason="max_connections"}``);
* bytes that are not HTTP/1.1 (a bad request line, a negative ``content-length``, broken
  chunks): uvicorn's plain-text 400 becomes the API's JSON error, and the close is
  counted (``malformed``) instead of logged at WARNING per request (``client_mistakes.py``);
* a request asking to upgrade (h2c, websocket): answered as HTTP/1.1, its body read as
  its body, not as the next request (``upgrades.py``).

A 400, 408 or 431 of bytes after whole pipelined requests is sent after their answers,
and a refused connection lingers before it closes (``refusals.py``). Each close is counted in ``featurestore_http_connections_closed_total{reason}``. Each
request carries the time its first byte was read (``time.perf_counter()``; ASGI's in
``scope[RECEIVED_AT]``, a direct join's in its cycle, ``join_cycle.py``): the request
timing starts there, not once the body is parsed.

No timer is armed per request. A uvloop timer costs ~1.9 µs to arm and cancel (uvicorn
arms one after every response for its keep-alive), and the three this needs would be
~8% of a batch-1 join (~70 µs of CPU). A request's phase changes only set the
connection's ``deadline`` (a float), and one sweep per :class:`ConnectionGuard` walks
the open connections every ``tick`` seconds, so a limit fires between its value and
its value plus one tick (at most 1 s). With uvicorn's keep-alive timer replaced too,
a request costs less CPU than with uvicorn's own protocol (benchmarks/http_front.py).

This relies on uvicorn's protocol internals: the attributes ``app``, ``scope``, ``url``,
``headers``, ``parser``, ``transport``, ``flow``, ``pipeline``, ``server_state`` (and a
cycle's ``disconnected``, ``message_event``, ``more_body``); the methods
``on_headers_complete``, ``on_message_complete``, ``pause_writing``, ``resume_writing``,
``_start_asgi_task``; ``data_received``, ``send_400_response`` and ``on_response_complete``,
replaced (the first by a copy without the timer's cancel, the last without the timer).
``tests/unit/test_connections.py`` fails when any of them changes.
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass
from typing import Any

import httptools
import uvicorn
from starlette.types import ASGIApp
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from featurestore import errors, metrics
from featurestore.api import client_mistakes, join_cycle, refusals, upgrades
from featurestore.errors import DeadlineExceeded, FeatureStoreError, LimitExceeded, Overloaded
from featurestore.refusal import RETRY_AFTER_SECONDS

RECEIVED_AT = "featurestore.received_at"
MAX_CONNECTIONS = "max_connections"  # a close reason, and a shed reason
REASONS = ("idle", "header_timeout", "body_timeout", "write_timeout", "header_too_large",
           MAX_CONNECTIONS, "malformed")  # fmt: skip

# Where the parser is in the connection's current request.
_IDLE = 0  # between requests (a request's body is complete; uvicorn's keep-alive timer runs)
_HEAD = 1  # reading a request line and headers
_BODY = 2  # reading a body


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    keep_alive: float  # seconds idle after a response
    header_timeout: float
    body_timeout: float
    max_header_bytes: int
    max_connections: int
    write_timeout: float = 30.0  # seconds a response may wait for the client to read it


class ConnectionGuard:
    """The limits of one HTTP server, its protocol factory (uvicorn's ``http=``) and the
    sweep that enforces the timeouts."""

    def __init__(
        self,
        limits: ConnectionLimits,
        *,
        count_open: bool = True,
        direct: join_cycle.DirectJoin | None = None,
    ) -> None:
        """``count_open``: this guard's connections are ``featurestore_http_connections``
        (one guard per process may say so); ``direct``: plain joins are answered without
        an ASGI cycle (featurestore/api/join_cycle.py)."""
        self.limits = limits
        self.direct = direct
        self.count_open = count_open
        shortest = min(limits.header_timeout, limits.body_timeout, limits.write_timeout)
        self.tick = max(0.05, min(1.0, shortest / 4))
        self.connections: set[GuardedHttpProtocol] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._closed = {reason: metrics.HTTP_CONNECTIONS_CLOSED.labels(reason) for reason in REASONS}

    def protocol(self, **uvicorn_args: Any) -> GuardedHttpProtocol:
        return GuardedHttpProtocol(self, **uvicorn_args)

    def uvicorn_config(
        self, app: ASGIApp, *, access_log: bool, backlog: int = 4096, **settings: Any
    ) -> uvicorn.Config:
        """uvicorn's settings for serving ``app`` under this guard. ``backlog``: uvicorn
        calls listen() on the socket again with it (its default, 2048, would replace
        the listen queue the socket was made with)."""
        return uvicorn.Config(
            app,
            http=self.protocol,  # type: ignore[arg-type]  # a factory of the protocol
            ws="none",  # no route takes a WebSocket: an upgrade is answered as plain HTTP
            timeout_keep_alive=self.limits.keep_alive,  # type: ignore[arg-type]  # (the guard's sweep closes)
            loop="none",  # the process runs its uvloop
            lifespan="off",
            log_config=None,
            server_header=False,
            access_log=access_log,
            backlog=backlog,
            # X-Forwarded-For rewrites the client address, which only the access log shows;
            # without it no middleware walks every request's headers (~1 µs a request).
            proxy_headers=access_log,
            **settings,
        )

    def count(self, reason: str) -> None:
        self._closed[reason].inc()

    def opened(self, conn: GuardedHttpProtocol) -> None:
        self.connections.add(conn)
        if self._timer is None:
            self._timer = conn.loop.call_later(self.tick, self._sweep, conn.loop)

    def lost(self, conn: GuardedHttpProtocol) -> None:
        self.connections.discard(conn)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        now = _now()
        for conn in [c for c in self.connections if c.deadline <= now or c.write_deadline <= now]:
            if conn.write_deadline <= now:
                conn.abort_stalled_write()
            else:
                conn.expire()
        if self.count_open:
            metrics.HTTP_CONNECTIONS.set(len(self.connections))
        self._timer = loop.call_later(self.tick, self._sweep, loop) if self.connections else None


class GuardedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol under the guard's limits (see the module docstring).

    Per request it overrides four methods (``data_received``, ``on_headers_complete``,
    ``on_message_complete``, ``on_response_complete``)."""

    def __init__(self, guard: ConnectionGuard, **uvicorn_args: Any) -> None:
        super().__init__(**uvicorn_args)
        self.guard = guard
        limits = guard.limits
        self._keep_alive = limits.keep_alive
        self._header_timeout = limits.header_timeout
        self._body_timeout = limits.body_timeout
        self._max_header_bytes = limits.max_header_bytes
        self.deadline = math.inf  # perf_counter() instant the current phase must end by
        # perf_counter() instant a paused write (client not reading) must resume by
        self.write_deadline = math.inf
        self._phase = _HEAD
        self.first_byte_at = 0.0  # the current request's first byte; 0: none yet
        self._chunk_at = 0.0  # when the bytes being parsed were read
        self._head_bytes = 0  # bytes read while in _HEAD: at least the head's size
        self._owed: tuple[int, FeatureStoreError, str] | None = None  # a refusal due after earlier answers
        self._lingering = False  # refused: what the client still sends is dropped (refusals.py)

    # -- connection -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.guard.opened(self)
        self.deadline = _now() + self._header_timeout
        n = self.guard.limits.max_connections
        if len(self.guard.connections) > n:
            # refused for capacity, as a shed join: Retry-After, and counted as shed
            error = Overloaded(
                f"this server process holds its limit of {n} connections; retry after "
                f"{RETRY_AFTER_SECONDS} s or on another replica",
                details=[{"reason": MAX_CONNECTIONS, "retry_after_seconds": RETRY_AFTER_SECONDS}],
            )
            self.app = self._refusal(503, error, MAX_CONNECTIONS)  # uvicorn runs self.app per request

    def connection_lost(self, exc: Exception | None) -> None:
        join_cycle.caller_left(self)  # a join running for this connection: cancelled
        self.guard.lost(self)
        self.deadline = self.write_deadline = math.inf
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._owed is not None or self._lingering:  # refused: nothing more is parsed (_refuse)
            return
        now = self._chunk_at = _now()
        phase = self._phase
        if phase == _IDLE:  # a request's first bytes (or line breaks before one)
            self._phase = _HEAD
            self.first_byte_at = now
            self._head_bytes = len(data)
            self.deadline = now + self._header_timeout
        elif phase == _HEAD:
            if not self.first_byte_at:  # the connection's first bytes
                self.first_byte_at = now
            self._head_bytes += len(data)
        try:  # uvicorn's data_received, less its keep-alive timer's cancel (none is armed)
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.send_400_response(client_mistakes.INVALID_REQUEST)
        except httptools.HttpParserUpgrade as upgrade:
            upgrades.read_on(self, data, upgrade.args[0])
        if self._phase == _HEAD and self._head_bytes > self._max_header_bytes:
            self._refuse_head()  # the head is incomplete and already over the limit

    def body_follows(self) -> None:
        """The current request's body is still to come (upgrades.py reopened it)."""
        self._phase, self.deadline = _BODY, self._chunk_at + self._body_timeout

    def expire(self) -> None:
        """The current phase's deadline passed (called by the guard's sweep)."""
        self.deadline = math.inf
        if self.transport.is_closing():
            return
        if self._lingering:
            self.transport.close()
        elif self._phase == _BODY:
            self._close("body_timeout")  # the request's app sees the disconnect
        elif self._phase == _HEAD and self.first_byte_at:
            t = self._header_timeout
            self._refuse(
                408, DeadlineExceeded(f"request headers not received within {t:g} s"), "header_timeout"
            )
        else:  # _IDLE after a response, or a connection that never sent a byte
            self._close("idle")

    def pause_writing(self) -> None:
        """The transport's write buffer went over its high-water mark: the client is not
        reading fast enough; it has ``write_timeout`` seconds to catch up."""
        if self.write_deadline == math.inf:
            self.write_deadline = _now() + self.guard.limits.write_timeout
        super().pause_writing()

    def resume_writing(self) -> None:
        self.write_deadline = math.inf
        super().resume_writing()

    def abort_stalled_write(self) -> None:
        """The client did not read a response for ``write_timeout`` seconds (called by the
        guard's sweep): abort, as a close would wait for the buffer to drain."""
        self.deadline = self.write_deadline = math.inf
        self.guard.count("write_timeout")
        self.transport.abort()  # connection_lost ends the response's drain()

    # -- parser callbacks ---------------------------------------------------------------

    def on_headers_complete(self) -> None:
        # A request that began inside the bytes of the one before it (pipelined) was
        # still _IDLE: it began when those bytes were read.
        received = self.first_byte_at if self._phase == _HEAD else self._chunk_at
        self._phase = _BODY
        self.deadline = self._chunk_at + self._body_timeout
        limit = self._max_header_bytes
        if self._head_bytes > limit and self._head_size() > limit:
            error = LimitExceeded(
                f"request line and headers exceed {limit} bytes", details=[{"limit_bytes": limit}]
            )
            app, self.app = self.app, self._refusal(431, error, "header_too_large")
            super().on_headers_complete()
            self.app = app
        elif (direct := self.guard.direct) is not None and (headers := join_cycle.eligible(direct, self)):
            join_cycle.start(self, direct, headers, received)  # a plain join: no ASGI cycle
            return
        else:
            super().on_headers_complete()
        self.scope[RECEIVED_AT] = received  # type: ignore[literal-required]

    def on_message_complete(self) -> None:
        self._phase = _IDLE
        cycle = self.cycle
        if cycle is not None and cycle.response_complete:  # answered before its body ended
            self.deadline = self._chunk_at + self._keep_alive
        else:
            self.deadline = math.inf  # the app runs; idle once it has answered
        super().on_message_complete()

    def on_response_complete(self) -> None:
        """uvicorn's, less its keep-alive timer (a uvloop timer armed after every response
        and cancelled by the next request's bytes, ~1.9 µs a request): the guard's sweep
        closes the idle connection instead. Checked against uvicorn's own in
        tests/unit/test_connections.py."""
        self.server_state.total_requests += 1
        if self.transport.is_closing():
            return
        self.flow.resume_reading()
        if self.pipeline:
            cycle, app = self.pipeline.pop()
            self._start_asgi_task(cycle, app)
        elif self._owed is not None:
            self._send_refusal(*self._owed)
        elif self._phase == _IDLE:  # not while the next request's head or this body is read
            self.deadline = _now() + self._keep_alive

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to bytes its parser refuses, as the API's JSON error."""
        self.logger.warning(msg)  # (uvicorn's line, which client_mistakes.py keeps out)
        if self._phase != _IDLE and self._head_size() > self._max_header_bytes:
            self._refuse_head()  # (httptools refuses a URL past 64 KiB first: 431 here too)
        error = errors.InvalidArgument(f"malformed HTTP/1.1 request ({msg.rstrip('.').lower()})")
        self._refuse(400, error, "malformed", in_body=self._phase == _BODY)

    def _refuse(self, status: int, error: FeatureStoreError, reason: str, in_body: bool = False) -> None:
        """Answer ``status`` and close, once the answers of whole requests before these
        bytes (pipelined) are sent, in order (on_response_complete): answering at once
        lost them, a push applied but reported only as the refusal. ``in_body``: the fault
        is in the newest request's body, and that request never runs."""
        if self.transport.is_closing() or self._owed is not None or self._lingering:
            return
        unanswered = self.cycle is not None and not self.cycle.response_complete
        if in_body:
            if self.pipeline and self.pipeline[0][0] is self.cycle:  # queued (appendleft)
                self.pipeline.popleft()
            else:
                unanswered = False  # it is the one running: nothing before it waits
        if not (unanswered or self.pipeline):
            self._send_refusal(status, error, reason)
            return
        # No timeout of these bytes applies meanwhile (the answers' write timeout does),
        # and what the client sends is read and dropped (uvicorn paused reading when it
        # queued a request): unread bytes at the close would make it a reset (refusals.py).
        self._owed = (status, error, reason)
        self.deadline = math.inf
        self.flow.resume_reading()

    def _send_refusal(self, status: int, error: FeatureStoreError, reason: str) -> None:
        self._owed = None
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:  # refused in its own body:
            cycle.disconnected = True  # it answers nothing more (a write after write_eof raises)
            cycle.message_event.set()
            join_cycle.caller_left(self)
        self.transport.write(refusals.response(status, error))
        self.guard.count(reason)
        if not self.transport.can_write_eof():  # (TLS: no half-close)
            self.transport.close()
            return
        self.transport.write_eof()  # the client reads to the end, then closes its side
        self._lingering = True
        self.deadline = _now() + refusals.LINGER_SECONDS

    # -- limits ------------------------------------------------------------------------

    def _head_size(self) -> int:
        return len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers)

    def _refuse_head(self) -> None:
        limit = self._max_header_bytes
        error = LimitExceeded(
            f"request line and headers exceed {limit} bytes", details=[{"limit_bytes": limit}]
        )
        self._refuse(431, error, "header_too_large")

    def _refusal(self, status: int, error: FeatureStoreError, reason: str) -> ASGIApp:
        """An ASGI app answering ``status`` with ``error`` and closing the connection."""
        shed = reason == MAX_CONNECTIONS

        def counted() -> None:
            self.guard.count(reason)
            if shed:
                metrics.requests_shed("http", MAX_CONNECTIONS).inc()

        return refusals.app(status, error, counted, RETRY_AFTER_SECONDS if shed else None)

    def _close(self, reason: str) -> None:
        self.guard.count(reason)
        self.transport.close()


_now = time.perf_counter
client_mistakes.install()  # uvicorn's WARNING per broken request: counted instead
