"""The HTTP connection guard (featurestore/api/connections.py) against the uvicorn it
subclasses: the internals it relies on are still there (this fails first when uvicorn
changes them), and a request's scope carries the time its first byte was read. The
limits themselves are tested on a real server: tests/integration/test_hostile_clients.py."""

from __future__ import annotations

import ast
import asyncio
import contextlib
import dataclasses
import hashlib
import inspect
import logging
import re
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import httptools
import pytest
import uvicorn
from prometheus_client import REGISTRY
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle
from uvicorn.server import ServerState

from featurestore.api.client_mistakes import QuietClientMistakes
from featurestore.api.connections import RECEIVED_AT, ConnectionGuard, ConnectionLimits
from tests.support import eventually

LIMITS = ConnectionLimits(
    keep_alive=5, header_timeout=5, body_timeout=5, max_header_bytes=4096, max_connections=10
)
GUARD = 30  # seconds; only turns a hang into a failure


async def noop_app(scope: Any, receive: Any, send: Any) -> None:
    raise AssertionError("not called")


# sha256 of uvicorn 0.54's HttpToolsProtocol.on_response_complete, which
# GuardedHttpProtocol.on_response_complete copies less the keep-alive timer: when uvicorn
# changes it, compare the two again and record the new digest here.
ON_RESPONSE_COMPLETE_SHA256 = "64e254f28e389e7614f2c828176d639174e66aa9d814a4b06624ec86ec0a5b95"
# The same for data_received, which GuardedHttpProtocol copies less the timer's cancel
# (and with an upgrade request read on as HTTP/1.1: featurestore/api/upgrades.py).
DATA_RECEIVED_SHA256 = "010a7ae59a5d3b1a5e7326ce246878568629d126a076d8af5ba10cab040fae43"


def test_the_uvicorn_internals_the_guard_relies_on_are_there() -> None:
    loop = asyncio.new_event_loop()
    try:
        proto = HttpToolsProtocol(
            config=uvicorn.Config(noop_app), server_state=ServerState(), app_state={}, _loop=loop
        )
    finally:
        loop.close()
    for name in ("app", "transport", "scope", "headers", "cycle", "flow", "pipeline", "server_state"):
        assert hasattr(proto, name), name
    for name in ("data_received", "on_headers_complete", "on_message_complete", "_start_asgi_task"):
        assert callable(getattr(HttpToolsProtocol, name)), name
    # the write timeout: uvicorn's flow control is told of a full buffer, and a lost
    # connection ends a response's drain()
    for name in ("pause_writing", "resume_writing"):
        assert "self.flow." + name in inspect.getsource(getattr(HttpToolsProtocol, name)), name
    assert "self.flow.resume_writing()" in inspect.getsource(HttpToolsProtocol.connection_lost)
    # a parser error is answered through send_400_response, after a WARNING whose text
    # QuietClientMistakes knows (as it knows the upgrade warnings')
    received = inspect.getsource(HttpToolsProtocol.data_received)
    assert "self.send_400_response(msg)" in received
    digest = hashlib.sha256(received.encode()).hexdigest()
    assert digest == DATA_RECEIVED_SHA256, "uvicorn changed data_received: compare the guard's copy"
    module = ast.parse(inspect.getsource(inspect.getmodule(HttpToolsProtocol)))  # type: ignore[arg-type]
    strings = {n.value for n in ast.walk(module) if isinstance(n, ast.Constant) and isinstance(n.value, str)}
    assert strings >= QuietClientMistakes.MESSAGES
    source = {
        name: inspect.getsource(getattr(HttpToolsProtocol, name))
        for name in ("on_message_begin", "on_url", "on_header", "on_headers_complete", "on_response_complete")
    }
    # each request runs self.app (the guard swaps it to answer 503 or 431)
    assert "app = self.app" in source["on_headers_complete"]
    # the request line and headers accumulate in self.url and self.headers (the head's size)
    assert "self.url += url" in source["on_url"] and "self.headers.append" in source["on_header"]
    assert '"headers": self.headers' in source["on_message_begin"]
    digest = hashlib.sha256(source["on_response_complete"].encode()).hexdigest()
    assert digest == ON_RESPONSE_COMPLETE_SHA256, "uvicorn changed on_response_complete: see above"


class _Events:
    """A parser delegate that lists its callbacks."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    def on_headers_complete(self) -> None:
        self.seen.append("headers")

    def on_body(self, body: bytes) -> None:
        self.seen.append("body")

    def on_message_complete(self) -> None:
        self.seen.append("complete")


def test_httptools_ends_an_upgrade_request_at_its_head_as_upgrades_py_expects() -> None:
    """upgrades.py takes the request back after this: its message ended with no body (in
    the same feed_data call as its head, so its app has not run), then HttpParserUpgrade
    carries the offset of the head's end."""
    head = b"POST /x HTTP/1.1\r\nconnection: upgrade\r\nupgrade: h2c\r\ncontent-length: 2\r\n\r\n"
    events = _Events()
    with pytest.raises(httptools.HttpParserUpgrade) as raised:
        httptools.HttpRequestParser(events).feed_data(head + b"hi")
    assert raised.value.args[0] == len(head)
    assert events.seen == ["headers", "complete"]


def test_the_cycle_says_whether_a_request_was_answered() -> None:
    """on_message_complete reads cycle.response_complete (answered before its body ended)."""
    assert "self.response_complete = False" in inspect.getsource(RequestResponseCycle.__init__)


class Recorder:
    """An ASGI app that remembers each request's scope and when it started."""

    def __init__(self) -> None:
        self.calls: list[tuple[float, float]] = []  # (scope[RECEIVED_AT], app start)
        self.done = asyncio.Event()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        started = time.perf_counter()
        while (await receive()).get("more_body"):
            pass
        self.calls.append((scope[RECEIVED_AT], started))
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})
        self.done.set()


@contextlib.asynccontextmanager
async def serving(app: Any, limits: ConnectionLimits = LIMITS) -> AsyncIterator[tuple[int, ConnectionGuard]]:
    """``app`` served under a guard of ``limits`` on a free port."""
    guard = ConnectionGuard(limits)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(
        uvicorn.Config(app, http=guard.protocol, loop="none", lifespan="off", log_config=None)  # type: ignore[arg-type]
    )
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:  # noqa: ASYNC110 - uvicorn has no startup event
        await asyncio.sleep(0.01)
    try:
        yield sock.getsockname()[1], guard
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, GUARD)
        guard.close()


@pytest.fixture
async def served() -> AsyncIterator[tuple[Recorder, int, ConnectionGuard]]:
    app = Recorder()
    async with serving(app) as (port, guard):
        yield app, port, guard


REQUEST = b"POST /x HTTP/1.1\r\nhost: t\r\ncontent-length: 2\r\n\r\nhi"


async def test_the_scope_carries_the_time_the_first_byte_was_read(
    served: tuple[Recorder, int, ConnectionGuard],
) -> None:
    app, port, guard = served
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(REQUEST[:10])
    await eventually(lambda: any(c.first_byte_at for c in guard.connections), GUARD, "the first bytes read")
    between = time.perf_counter()
    writer.write(REQUEST[10:])
    await asyncio.wait_for(app.done.wait(), GUARD)
    writer.close()
    [(received_at, started)] = app.calls
    assert 0 < received_at < between < started


async def test_pipelined_requests_each_carry_a_first_byte_time(
    served: tuple[Recorder, int, ConnectionGuard],
) -> None:
    app, port, _ = served
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(REQUEST * 3)
    for _ in range(3):
        assert (await asyncio.wait_for(reader.readuntil(b"ok"), GUARD)).startswith(b"HTTP/1.1 200")
    writer.close()
    assert len(app.calls) == 3
    assert all(0 < received_at <= started for received_at, started in app.calls)


async def test_broken_bytes_after_pipelined_requests_are_refused_after_their_answers(
    served: tuple[Recorder, int, ConnectionGuard],
) -> None:
    app, port, _ = served
    before = _closed("malformed")
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(REQUEST * 2 + b"GARBAGE\r\n\r\n" + REQUEST)  # one write: parsed in one go
    received = await asyncio.wait_for(reader.read(), GUARD)  # to the close
    writer.close()
    assert re.findall(rb"HTTP/1\.1 (\d{3}) ", received) == [b"200", b"200", b"400"]
    assert received.count(b"\r\n\r\nok") == 2 and b"malformed HTTP/1.1 request" in received
    assert len(app.calls) == 2  # the request after the broken bytes was never read
    assert _closed("malformed") == before + 1


async def test_broken_bytes_with_no_request_being_answered_are_refused_at_once(
    served: tuple[Recorder, int, ConnectionGuard],
) -> None:
    app, port, _ = served
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(REQUEST)
    assert (await asyncio.wait_for(reader.readuntil(b"ok"), GUARD)).startswith(b"HTTP/1.1 200")
    writer.write(b"GARBAGE\r\n\r\n")
    received = await asyncio.wait_for(reader.read(), GUARD)
    writer.close()
    assert received.startswith(b"HTTP/1.1 400 ") and len(app.calls) == 1


class Gated:
    """An ASGI app whose first request answers only once ``release`` is set."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.running = asyncio.Event()
        self.calls = 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.calls += 1
        while (await receive()).get("more_body"):
            pass
        if self.calls == 1:
            self.running.set()
            await self.release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
        await send({"type": "http.response.body", "body": b"ok"})


@pytest.fixture
async def gated() -> AsyncIterator[tuple[Gated, int]]:
    app = Gated()
    async with serving(app, dataclasses.replace(LIMITS, header_timeout=0.2)) as (port, _):  # (0.05 s sweeps)
        yield app, port
        app.release.set()


CHUNKED = b"POST /x HTTP/1.1\r\nhost: t\r\ntransfer-encoding: chunked\r\n\r\n2\r\nhi\r\nzz\r\n"


async def behind_a_running_request(gated: tuple[Gated, int], *sends: tuple[bytes, float]) -> list[bytes]:
    """The statuses a client gets that sends ``REQUEST``, then, while its answer is held
    back, each ``(bytes, seconds to wait after)`` of ``sends``, and reads to the end."""
    app, port = gated
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(REQUEST)
    await asyncio.wait_for(app.running.wait(), GUARD)
    for data, wait in sends:
        writer.write(data)
        await asyncio.sleep(wait)
    app.release.set()
    received = await asyncio.wait_for(reader.read(), GUARD)  # an EOF, not a reset
    writer.close()
    return re.findall(rb"HTTP/1\.1 (\d{3}) ", received)


async def test_a_queued_request_with_a_broken_body_is_refused_after_the_running_one_is_answered(
    gated: tuple[Gated, int],
) -> None:
    # queued behind the running request, its chunks broken; past the 0.2 s header timeout too
    assert await behind_a_running_request(gated, (CHUNKED, 0.3)) == [b"200", b"400"]
    assert gated[0].calls == 1


async def test_broken_bytes_arriving_while_a_request_outlasts_the_header_timeout_wait_for_its_answer(
    gated: tuple[Gated, int],
) -> None:
    # 0.5 s: the header timeout (0.2 s) would have answered 408 and closed
    garbage = b"GARBAGE\r\n\r\n" + b"x" * 1_000_000
    assert await behind_a_running_request(gated, (garbage, 0.5)) == [b"200", b"400"]


@pytest.mark.parametrize(
    ("second", "statuses"),
    [
        (CHUNKED, [b"200", b"400"]),  # queued, its chunks broken
        (REQUEST + b"GARBAGE\r\n\r\n", [b"200", b"200", b"400"]),  # queued, then garbage
    ],
    ids=["broken-body", "garbage"],
)
async def test_a_client_that_goes_on_sending_after_refused_bytes_still_gets_every_answer(
    gated: tuple[Gated, int], second: bytes, statuses: list[bytes]
) -> None:
    """A queued request makes uvicorn stop reading; closing with the client's later bytes
    unread was a TCP reset, and the reset destroyed the answers (review s54 round 3)."""
    more = b"x" * 20_000  # the rest of its body, or its next requests
    assert await behind_a_running_request(gated, (second, 0.1), (more, 0.1)) == statuses


@pytest.mark.parametrize(
    ("second", "status"),
    [(b"GET /x HTTP/1.1\r\nhost: t\r\n", b"408"), (b"GET /x HTTP/1.1\r\nx: " + b"a" * 5000, b"431")],
    ids=["head-stalls", "head-too-large"],
)
async def test_a_pipelined_head_refused_while_the_request_before_it_runs_waits_for_its_answer(
    gated: tuple[Gated, int], second: bytes, status: bytes
) -> None:
    # never completed; past the 0.2 s header timeout or the 4,096-byte limit
    assert await behind_a_running_request(gated, (second, 0.5)) == [b"200", status]


async def test_a_refused_connection_closes_once_the_client_closes_its_side(
    served: tuple[Recorder, int, ConnectionGuard],
) -> None:
    _, port, guard = served
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GARBAGE\r\n\r\n")
    assert (await asyncio.wait_for(reader.read(), GUARD)).startswith(b"HTTP/1.1 400 ")  # and the server's EOF
    assert len(guard.connections) == 1  # lingering: what the client still sends is dropped
    writer.write(b"more garbage")
    writer.write_eof()
    # well inside the linger (2 s and up to a sweep tick more): the client's EOF ended it
    await eventually(lambda: not guard.connections, 1.5, "the refused connection closed at the client's EOF")
    writer.close()


async def test_a_request_refused_in_its_own_body_answers_nothing_after_the_400(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An app that answers without reading the body (Starlette's 404) answered after
    the refusal's half-close: a write after write_eof raised, logged at ERROR with a
    traceback, once per such request (review s54 round 4)."""

    async def not_found(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 404, "headers": [(b"content-length", b"0")]})
        await send({"type": "http.response.body", "body": b""})

    async with serving(not_found) as (port, _):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(CHUNKED)  # one write: the app is started, then its chunks are refused
        received = await asyncio.wait_for(reader.read(), GUARD)
        writer.close()
        await asyncio.sleep(0.1)  # the app's task runs on
    assert re.findall(rb"HTTP/1\.1 (\d{3}) ", received) == [b"400"]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def _closed(reason: str) -> float:
    value = REGISTRY.get_sample_value("featurestore_http_connections_closed_total", {"reason": reason})
    return value or 0.0


@pytest.mark.parametrize("size", [10_000, 100_000])  # (past ~64 KiB httptools refuses the line first)
async def test_a_request_line_over_the_head_limit_is_a_431_however_long(
    served: tuple[Recorder, int, ConnectionGuard], size: int
) -> None:
    _, port, _ = served
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /" + b"a" * size + b" HTTP/1.1\r\nhost: t\r\n\r\n")
    received = await asyncio.wait_for(reader.read(), GUARD)
    writer.close()
    assert received.startswith(b"HTTP/1.1 431 ") and b"exceed 4096 bytes" in received
