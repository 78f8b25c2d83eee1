"""The join's request cycle without ASGI: a plain ``POST /v1/feature/join`` answered
straight from uvicorn's protocol.

uvicorn runs every request as an ASGI cycle: a scope with its path parsed and decoded,
the app's dispatch, the body read through ``receive()`` messages, and the response sent
as two ``send()`` messages whose headers uvicorn checks by regex one by one. For a
batch-1 join that front cost 28.5 µs of CPU, as much as the join itself from memory
(28.2 µs; ``benchmarks/http_front.py``'s request, measured in process). A
:class:`JoinCycle` is uvicorn's own ``RequestResponseCycle`` (so the protocol's body,
disconnect, pipelining and shutdown handling drive it unchanged) whose task waits for
the body, hands it with the headers the join reads to a :data:`JoinHandler`, and writes
the answer with a head built from bytes.

Only the plain case takes it (``eligible``): HTTP/1.1, ``POST`` of exactly the join's
path (no query string), a ``content-length`` within the body limit and no
``transfer-encoding``, no ``Expect: 100-continue``, no upgrade, the access log off
(``access_log: false``, the default).
Everything else (chunked or oversized bodies, HTTP/1.0, a refusal the connection guard
swapped in) goes through ASGI as before, to the same join (``HttpApi``).

This relies on uvicorn's ``RequestResponseCycle`` (its constructor's arguments; the
attributes ``body``, ``more_body``, ``message_event``, ``disconnected``, ``keep_alive``,
``response_complete``, ``flow``, ``transport``, ``default_headers``, ``on_response``;
``run_asgi`` as the task's coroutine) and on how the protocol drives it
(``on_body``, ``on_message_complete``, ``connection_lost``, ``shutdown``):
``tests/unit/test_join_cycle.py`` fails when any of them changes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

from uvicorn.protocols.http.httptools_impl import RequestResponseCycle

from featurestore.api import json_codec
from featurestore.api.bodies import declared_length
from featurestore.api.credentials import TWICE
from featurestore.errors import Unavailable

log = logging.getLogger(__name__)

JOIN_PATH_BYTES = b"/v1/feature/join"  # routes.JOIN_PATH (not imported: routes imports FastAPI)

Headers = Sequence[tuple[bytes, bytes]]


@dataclass(slots=True)
class JoinHeaders:
    """What the join reads of a request's headers (ASGI's: lowercase names), in one pass."""

    length: int = -1  # content-length; -1: none, or not a number
    chunked: bool = False  # a transfer-encoding header
    accept: bytes | None = None
    traceparent: str | None = None
    deadline_ms: bytes | None = None  # x-featurestore-deadline-ms
    authorization: bytes | None = None
    encoding: bytes | None = None  # content-encoding (refused: bodies.encoding_refused)

    @classmethod
    def scan(cls, headers: Headers) -> JoinHeaders:
        h = cls()
        for name, value in headers:
            if name == b"content-length":
                h.length = declared_length(value)
            elif name == b"accept":
                h.accept = value
            elif name == b"traceparent":
                h.traceparent = value.decode("latin-1")
            elif name == b"x-featurestore-deadline-ms":
                h.deadline_ms = value
            elif name == b"authorization":  # (given twice: refused, credentials.py)
                h.authorization = value if h.authorization is None else TWICE
            elif name == b"transfer-encoding":
                h.chunked = True
            elif name == b"content-encoding":  # (given twice: both, as one list)
                h.encoding = value if h.encoding is None else h.encoding + b"," + value
        return h


# (status, content type, body, more headers): what a join answers
Answer = tuple[int, bytes, bytes, Sequence[tuple[bytes, bytes]]]
# Body, its headers and its first byte's time (perf_counter) in, the answer out; never raises.
JoinHandler = Callable[[bytes, JoinHeaders, float], Awaitable[Answer]]
# Called instead when the client left before the whole body arrived (t0).
Abandoned = Callable[[float], None]


@dataclass(frozen=True, slots=True)
class DirectJoin:
    """The app whose join the protocol may answer directly, and how."""

    app: Any  # the ASGI app serving the join otherwise (the protocol's ``app`` must be it)
    handler: JoinHandler
    abandoned: Abandoned
    max_body_bytes: int
    inflight: Any = None  # a gauge (inc/dec) of the joins from their start to their answer


class JoinCycle(RequestResponseCycle):
    """A join's request cycle (see the module docstring).

    A caller that leaves while its join runs cancels the join, as a gRPC caller's
    cancel does: while the handler runs, the cycle is its connection's ``joining``, and
    the connection's loss cancels its task (``caller_left``: the join then releases its
    admission and rows at once and counts as ``CANCELLED``, instead of running to its
    deadline for nobody). A join with another request pipelined behind it is not: uvicorn
    stops reading the connection while it holds that one, so the close goes unseen."""

    def __init__(
        self, direct: DirectJoin, headers: JoinHeaders, received_at: float, proto: Any, **cycle: Any
    ) -> None:
        super().__init__(**cycle)
        self.direct = direct
        self.join_headers = headers
        self.received_at = received_at
        self.proto = proto
        self.task: asyncio.Task[Any] | None = None  # the cycle's own, while the handler runs
        self.left = False  # the caller left while the handler ran: the task was cancelled

    async def run_asgi(self, app: Any) -> None:
        """The task uvicorn's protocol starts (or queues behind a pipelined request)."""
        inflight = self.direct.inflight
        if inflight is not None:  # from the start, before the body, as through ASGI
            inflight.inc()
        try:
            while self.more_body and not self.disconnected:  # the body is still arriving
                self.flow.resume_reading()  # (on_body pauses it past 64 KiB; bounded: the limit)
                await self.message_event.wait()
                self.message_event.clear()
            if self.disconnected:
                self.direct.abandoned(self.received_at)
                return
            proto = self.proto
            self.task = asyncio.current_task(proto.loop)  # (with the loop: 107 against 353 ns)
            proto.joining = self
            try:
                status, ctype, out, extra = await self.direct.handler(
                    bytes(self.body), self.join_headers, self.received_at
                )
            finally:
                proto.joining = None
            await self.respond(status, ctype, out, extra)
        except BaseException as exc:  # as uvicorn's run_asgi: the handler itself never raises
            if isinstance(exc, asyncio.CancelledError) and self.left:
                return  # the caller left (the handler counted it CANCELLED): nobody to answer
            if isinstance(exc, asyncio.CancelledError):
                self._stopped()
                return
            log.error("Exception in the join's request cycle", exc_info=exc)
            if not self.response_started and not self.disconnected:
                self._write_500()
            else:
                self.transport.close()
        finally:
            self.on_response = lambda: None
            if inflight is not None:
                inflight.dec()

    async def respond(
        self, status: int, ctype: bytes, out: bytes, extra: Sequence[tuple[bytes, bytes]]
    ) -> None:
        if self.flow.write_paused and not self.disconnected:
            await self.flow.drain()  # the client reads slowly (the guard's write timeout runs)
        if self.disconnected:
            return
        self.response_started = True
        head = [_status_line(status), _prefix(self.default_headers), b"content-type: ", ctype]
        head.append(b"\r\ncontent-length: %d\r\n" % len(out))
        for name, value in extra:
            if name == b"connection" and value == b"close":
                self.keep_alive = False
                continue
            head += (name, b": ", value, b"\r\n")
        if not self.keep_alive:
            head.append(b"connection: close\r\n")
        head.append(b"\r\n")
        # one send (writev on uvloop), not one for each: 1-5% less CPU a request at batch 1
        # in three A/B runs (benchmarks/RESULTS.md, "One write per response")
        self.transport.writelines((b"".join(head), out))
        self.response_complete = True
        self.message_event.set()
        if not self.keep_alive:
            self.transport.close()
        self.on_response()

    def _stopped(self) -> None:
        """The drain ended with this join unanswered (uvicorn cancels the requests still
        running at ``timeout_graceful_shutdown``): counted CANCELLED (by the handler, when
        it ran), answered ``stopped_answer``, the connection closed; not a server fault."""
        if self.more_body and not self.disconnected:
            self.direct.abandoned(self.received_at)  # the handler never ran: count it here
        log.info("a join unanswered when the drain ended: answered 503 and closed")
        if not self.response_started and not self.disconnected:
            self.response_started = self.response_complete = True
            self.transport.write(stopped_answer(self.default_headers))
            self.message_event.set()
        self.transport.close()
        self.on_response()

    def _write_500(self) -> None:
        """uvicorn's answer to an app that failed before answering: plain text, closed."""
        self.response_started = self.response_complete = True
        self.transport.write(
            b"HTTP/1.1 500 Internal Server Error\r\n%scontent-type: text/plain; charset=utf-8\r\n"
            b"content-length: 21\r\nconnection: close\r\n\r\nInternal Server Error"
            % _prefix(self.default_headers)
        )
        self.message_event.set()
        self.transport.close()
        self.on_response()  # (counts the request; the closed transport starts nothing more)


def stopped_answer(default_headers: Headers) -> bytes:
    """What a request the drain cut gets (this cycle's, or any whose body was still
    arriving: uvicorn_server.py): 503 UNAVAILABLE, retryable elsewhere, and the close."""
    body = json_codec.encode_error(STOPPED.to_dict())
    return (
        b"HTTP/1.1 503 Service Unavailable\r\n%scontent-type: application/json\r\ncontent-length: %d\r\n"
        b"retry-after: 1\r\nconnection: close\r\n\r\n%s" % (_prefix(default_headers), len(body), body)
    )


STOPPED = Unavailable(
    "the server stopped (its drain ended) before this request was answered; retry on another replica",
    details=[{"reason": "stopping", "retry_after_seconds": 1}],
)


def caller_left(proto: Any) -> None:
    """The connection ``proto`` is lost: cancel the join its handler runs, if any."""
    cycle = getattr(proto, "joining", None)  # (set by JoinCycle.run_asgi)
    if cycle is not None and cycle.task is not None:
        cycle.left = True
        cycle.task.cancel()


def eligible(direct: DirectJoin, proto: Any) -> JoinHeaders | None:
    """The request's join headers when uvicorn's protocol ``proto`` (at its headers'
    end) holds a join this cycle may answer, else None (ASGI answers it)."""
    if (
        proto.url != JOIN_PATH_BYTES
        or proto.app is not direct.app
        or proto.expect_100_continue
        or proto.config.access_log  # (uvicorn's access lines: written by its cycle)
        or proto.limit_concurrency is not None
    ):
        return None
    parser = proto.parser
    if parser.get_method() != b"POST" or parser.get_http_version() != "1.1" or parser.should_upgrade():
        return None
    headers = JoinHeaders.scan(proto.headers)
    if headers.chunked or not 0 <= headers.length <= direct.max_body_bytes:
        return None
    return headers


def start(proto: Any, direct: DirectJoin, headers: JoinHeaders, received_at: float) -> None:
    """Run the join as ``proto``'s current request, as uvicorn's ``on_headers_complete``
    runs a cycle: at once, or queued behind a pipelined request still being answered."""
    cycle = JoinCycle(
        direct,
        headers,
        received_at,
        proto,
        scope=proto.scope,
        transport=proto.transport,
        flow=proto.flow,
        logger=proto.logger,
        access_logger=proto.access_logger,
        access_log=False,
        default_headers=proto.server_state.default_headers,
        message_event=asyncio.Event(),
        expect_100_continue=False,
        keep_alive=proto.parser.should_keep_alive(),
        on_response=proto.on_response_complete,
    )
    existing, proto.cycle = proto.cycle, cycle
    if existing is None or existing.response_complete:
        proto._start_asgi_task(cycle, proto.app)
    else:
        proto.flow.pause_reading()
        proto.pipeline.appendleft((cycle, proto.app))


_STATUS_LINES: dict[int, bytes] = {}


def _status_line(status: int) -> bytes:
    line = _STATUS_LINES.get(status)
    if line is None:
        line = _STATUS_LINES[status] = b"HTTP/1.1 %d %s\r\n" % (status, HTTPStatus(status).phrase.encode())
    return line


# uvicorn's default headers (``date``, replaced once a second by its server) as bytes,
# rendered once per list
_rendered: tuple[object, bytes] = (None, b"")


def _prefix(default_headers: Headers) -> bytes:
    global _rendered
    if _rendered[0] is not default_headers:
        _rendered = (default_headers, b"".join(b"%s: %s\r\n" % (n, v) for n, v in default_headers))
    return _rendered[1]
