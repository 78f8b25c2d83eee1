"""The join's cycle without ASGI (featurestore/api/join_cycle.py): the uvicorn internals
it relies on are still there, it answers what it takes as ASGI would and leaves the rest
to ASGI, and it keeps uvicorn's connection semantics (pipelining, a body in pieces, a
client leaving, ``connection: close``, graceful shutdown, a failing handler). On a real
uvicorn server under the connection guard, with a scripted handler or the real join."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import inspect
import json
import socket
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import prometheus_client
import pytest
import uvicorn
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from benchmarks.http_front import make_api
from featurestore.api.connections import ConnectionGuard, ConnectionLimits, GuardedHttpProtocol
from featurestore.api.http import HttpApi
from featurestore.api.join_cycle import Answer, DirectJoin, JoinHeaders
from tests.support import guarded_uvicorn

LIMITS = ConnectionLimits(
    keep_alive=5,
    header_timeout=5,
    body_timeout=5,
    max_header_bytes=16384,
    max_connections=10,
    write_timeout=1,
)
LIMIT = 1 << 20  # the scripted server's body limit: above uvicorn's 64 KiB read pause
GUARD = 30  # seconds; only turns a hang into a failure
BODY = b'{"entities":{"user_id":[17]},"features":["profile:age","profile:country","profile:score"]}'


def join_request(body: bytes = BODY, path: bytes = b"/v1/feature/join", extra: bytes = b"") -> bytes:
    head = b"POST %s HTTP/1.1\r\nhost: t\r\ncontent-type: application/json\r\ncontent-length: %d\r\n%s\r\n"
    return head % (path, len(body), extra) + body


# sha256 of uvicorn 0.54's HttpToolsProtocol.on_headers_complete, which join_cycle.start
# stands in for on a plain join (scope, concurrency limit, the cycle, start or queue):
# when uvicorn changes it, compare again and record the new digest here.
ON_HEADERS_COMPLETE_SHA256 = "1ea8589acfad92d8ff9182775f337d98fc469e0fa39642a83195fca920f5ca96"


def test_the_uvicorn_internals_the_join_cycle_relies_on_are_there() -> None:
    # the cycle's constructor takes what join_cycle.start passes
    params = set(inspect.signature(RequestResponseCycle.__init__).parameters) - {"self"}
    start = inspect.getsource(inspect.getmodule(JoinHeaders).start)  # type: ignore[union-attr]
    assert params == {p for p in params if f"{p}=" in start}, params
    init = inspect.getsource(RequestResponseCycle.__init__)
    for attr in ("body", "more_body", "message_event", "disconnected", "keep_alive", "response_complete",
                 "response_started", "flow", "transport", "default_headers", "on_response"):  # fmt: skip
        assert f"self.{attr} = " in init, attr
    # the protocol drives a cycle through those attributes, and runs its run_asgi as the task
    src = {n: inspect.getsource(getattr(HttpToolsProtocol, n)) for n in (
        "on_body", "on_message_complete", "connection_lost", "shutdown", "_start_asgi_task",
        "on_headers_complete", "__init__")}  # fmt: skip
    assert "self.cycle.body += body" in src["on_body"]
    assert "self.cycle.more_body = False" in src["on_message_complete"]
    assert "self.cycle.message_event.set()" in src["on_message_complete"]
    assert "self.cycle.disconnected = True" in src["connection_lost"]
    assert "self.cycle.keep_alive = False" in src["shutdown"]
    assert "cycle.run_asgi(app)" in src["_start_asgi_task"]
    assert "self.pipeline.appendleft((self.cycle, app))" in src["on_headers_complete"]
    assert "existing_cycle.response_complete" in src["on_headers_complete"]
    for attr in (
        "expect_100_continue",
        "config",
        "limit_concurrency",
        "parser",
        "logger",
        "access_logger",
        "loop",
    ):
        assert f"self.{attr} = " in src["__init__"], attr
    for name in ("drain", "resume_reading", "pause_reading"):
        assert callable(getattr(FlowControl, name)), name
    assert "self.write_paused = " in inspect.getsource(FlowControl.__init__)
    digest = hashlib.sha256(src["on_headers_complete"].encode()).hexdigest()
    assert digest == ON_HEADERS_COMPLETE_SHA256, "uvicorn changed on_headers_complete: see above"


class Scripted:
    """A join handler answering what a test scripts; the ASGI app it stands beside
    answers 299, so a response says which way it went."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []
        self.abandoned: list[float] = []
        self.release = asyncio.Event()
        self.release.set()
        self.raise_once = False
        self.answer_bytes = 0  # 0: a short JSON answer; else one of this many bytes

    async def asgi(self, scope: Any, receive: Any, send: Any) -> None:
        while (await receive()).get("more_body"):
            pass
        await send({"type": "http.response.start", "status": 299, "headers": [(b"content-length", b"4")]})
        await send({"type": "http.response.body", "body": b"asgi"})

    async def handler(self, body: bytes, headers: JoinHeaders, t0: float) -> Answer:
        self.bodies.append(body)
        await self.release.wait()
        if self.raise_once:
            self.raise_once = False
            raise RuntimeError("scripted")
        if self.answer_bytes:
            return 200, b"application/octet-stream", b"x" * self.answer_bytes, ()
        return 200, b"application/json", b'{"n":%d}' % len(self.bodies), ()


@pytest.fixture(params=[False], ids=["access-log-off"])
async def server(request: pytest.FixtureRequest) -> AsyncIterator[tuple[Scripted, int, uvicorn.Server]]:
    script = Scripted()
    asgi = script.asgi  # one bound method: the protocol's app must be the very object
    direct = DirectJoin(asgi, script.handler, script.abandoned.append, max_body_bytes=LIMIT)
    guard = ConnectionGuard(LIMITS, direct=direct)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    srv = uvicorn.Server(
        guard.uvicorn_config(
            asgi, access_log=request.param, timeout_graceful_shutdown=GUARD, interface="asgi3"
        )
    )
    task = asyncio.create_task(srv.serve(sockets=[sock]))
    while not srv.started:  # noqa: ASYNC110 - uvicorn has no startup event
        await asyncio.sleep(0.01)
    yield script, sock.getsockname()[1], srv
    srv.should_exit = True
    script.release.set()
    await asyncio.wait_for(task, GUARD)
    guard.close()


async def responses(reader: asyncio.StreamReader, n: int) -> list[tuple[int, dict[bytes, bytes], bytes]]:
    out = []
    for _ in range(n):
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), GUARD)
        lines = head.split(b"\r\n")
        headers = dict(line.split(b": ", 1) for line in lines[1:] if line)
        body = await asyncio.wait_for(reader.readexactly(int(headers[b"content-length"])), GUARD)
        out.append((int(lines[0].split(b" ")[1]), headers, body))
    return out


async def test_a_plain_join_is_answered_by_the_handler_with_the_date_and_its_length(
    server: tuple[Scripted, int, uvicorn.Server],
) -> None:
    script, port, _ = server
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(join_request(b"{}"))
    [(status, headers, body)] = await responses(reader, 1)
    assert (status, body, script.bodies) == (200, b'{"n":1}', [b"{}"])
    assert headers[b"content-type"] == b"application/json" and b"date" in headers
    assert b"connection" not in headers  # kept alive
    writer.close()


async def test_a_plain_joins_head_and_body_leave_the_server_in_one_write(
    server: tuple[Scripted, int, uvicorn.Server], monkeypatch: pytest.MonkeyPatch
) -> None:
    """One writelines (one writev on uvloop) per answer: a write for the head and one for
    the body cost a send each, 1-5% more CPU per request at batch 1 (three A/B runs,
    benchmarks/RESULTS.md)."""
    writes: list[tuple[str, list[bytes]]] = []  # the protocol's calls (not the transport's own)
    made = GuardedHttpProtocol.connection_made

    def recording(self: GuardedHttpProtocol, transport: Any) -> None:
        write, writelines = transport.write, transport.writelines
        inside = False  # asyncio's writelines joins the parts and calls write

        def write_(data: bytes) -> None:
            if not inside:
                writes.append(("write", [bytes(data)]))
            write(data)

        def writelines_(parts: Sequence[bytes]) -> None:
            nonlocal inside
            writes.append(("writelines", [bytes(p) for p in parts]))
            inside = True
            try:
                writelines(parts)
            finally:
                inside = False

        transport.write, transport.writelines = write_, writelines_
        made(self, transport)

    monkeypatch.setattr(GuardedHttpProtocol, "connection_made", recording)
    script, port, _ = server
    script.release.set()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(join_request(b"{}") + join_request(b"[]"))
    assert [body for _, _, body in await responses(reader, 2)] == [b'{"n":1}', b'{"n":2}']
    assert [kind for kind, _ in writes] == ["writelines", "writelines"]
    assert all(parts[0].startswith(b"HTTP/1.1 200 ") and parts[1].startswith(b'{"n":') for _, parts in writes)
    writer.close()


@pytest.mark.parametrize(
    "request_bytes",
    [
        join_request(path=b"/v1/feature/join?x=1"),  # a query string
        join_request(b"x" * (LIMIT + 1)),  # over the body limit
        join_request(extra=b"expect: 100-continue\r\n"),
        join_request().replace(b"HTTP/1.1", b"HTTP/1.0", 1),
        join_request().replace(b"POST", b"PUT", 1),
        b"POST /v1/feature/join HTTP/1.1\r\nhost: t\r\ntransfer-encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
    ],
    ids=["query-string", "over-limit", "expect-continue", "http-1.0", "put", "chunked"],
)
async def test_what_is_not_a_plain_join_goes_through_asgi(
    server: tuple[Scripted, int, uvicorn.Server], request_bytes: bytes
) -> None:
    script, port, _ = server
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request_bytes)
    data = await asyncio.wait_for(reader.read(4096), GUARD)
    while not data.endswith(b"asgi"):
        more = await asyncio.wait_for(reader.read(4096), GUARD)
        assert more, data
        data += more
    assert b" 299 " in data and script.bodies == []
    writer.close()


@pytest.mark.parametrize("server", [True], ids=["access-log-on"], indirect=True)
async def test_with_the_access_log_on_joins_go_through_asgi_which_writes_its_lines(
    server: tuple[Scripted, int, uvicorn.Server],
) -> None:
    script, port, _ = server
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(join_request())
    [(status, _, _)] = await responses(reader, 1)
    assert status == 299 and script.bodies == []
    writer.close()


async def test_pipelined_joins_and_other_requests_are_answered_in_order(
    server: tuple[Scripted, int, uvicorn.Server],
) -> None:
    _, port, _ = server
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    other = join_request(path=b"/v1/feature/join?asgi")
    writer.write(join_request() + other + join_request() + join_request())
    got = [(status, body) for status, _, body in await responses(reader, 4)]
    assert got == [(200, b'{"n":1}'), (299, b"asgi"), (200, b'{"n":2}'), (200, b'{"n":3}')]
    writer.close()


async def test_a_body_in_pieces_is_answered_once_whole(server: tuple[Scripted, int, uvicorn.Server]) -> None:
    script, port, _ = server
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    whole = join_request()
    writer.write(whole[:-20])
    await asyncio.sleep(0.05)
    assert script.bodies == []
    writer.write(whole[-20:])
    [(status, _, _)] = await responses(reader, 1)
    assert status == 200 and script.bodies == [BODY]
    writer.close()


async def test_a_body_far_over_64_kib_in_pieces_is_read_whole(
    server: tuple[Scripted, int, uvicorn.Server],
) -> None:
    """uvicorn pauses reading once 64 KiB of body wait unread: the cycle resumes it."""
    script, port, _ = server
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    body = b"y" * (LIMIT - 10)
    whole = join_request(body)
    for at in range(0, len(whole), 100_000):
        writer.write(whole[at : at + 100_000])
        await writer.drain()
    [(status, _, _)] = await asyncio.wait_for(responses(reader, 1), GUARD)
    assert status == 200 and script.bodies == [body]
    writer.close()


async def test_a_client_that_does_not_read_stops_the_joins_until_it_is_cut_off(
    server: tuple[Scripted, int, uvicorn.Server],
) -> None:
    """Pipelined joins whose answers are not read: once the send buffers are full the
    cycle waits to write (the next join is not even started) until the write timeout
    aborts the connection; answers are not piled up in memory meanwhile."""
    script, port, _ = server
    script.answer_bytes = 100_000
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: a small window
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    reader, writer = await asyncio.open_connection(sock=sock)
    before = _write_timeouts()
    writer.write(join_request() * 200)  # 20 MB of answers: far more than the kernel's buffers
    await writer.drain()
    # the write timeout (1 s) aborts the connection: reading after that meets the reset
    for _ in range(int(GUARD / 0.05)):
        if _write_timeouts() > before:
            break
        await asyncio.sleep(0.05)
    assert _write_timeouts() == before + 1
    with contextlib.suppress(ConnectionError):
        while await asyncio.wait_for(reader.read(1 << 20), GUARD):
            pass
    writer.close()
    assert 0 < len(script.bodies) < 100, len(script.bodies)


async def test_a_client_leaving_before_its_body_ended_is_counted_abandoned_not_answered(
    server: tuple[Scripted, int, uvicorn.Server],
) -> None:
    script, port, _ = server
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(join_request()[:-5])
    await asyncio.sleep(0.05)
    writer.close()
    for _ in range(int(GUARD / 0.01)):
        if script.abandoned:
            break
        await asyncio.sleep(0.01)
    assert len(script.abandoned) == 1 and script.bodies == []


async def test_connection_close_is_answered_then_the_connection_closed(
    server: tuple[Scripted, int, uvicorn.Server],
) -> None:
    _, port, _ = server
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(join_request(extra=b"connection: close\r\n"))
    [(status, headers, _)] = await responses(reader, 1)
    assert status == 200 and headers[b"connection"] == b"close"
    assert await asyncio.wait_for(reader.read(), GUARD) == b""
    writer.close()


async def test_a_join_in_flight_at_shutdown_is_answered_with_connection_close(
    server: tuple[Scripted, int, uvicorn.Server],
) -> None:
    script, port, srv = server
    script.release.clear()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(join_request())
    while not script.bodies:  # noqa: ASYNC110 - the handler holds the join
        await asyncio.sleep(0.01)
    srv.should_exit = True
    await asyncio.sleep(0.2)  # uvicorn's shutdown tells each connection
    script.release.set()
    [(status, headers, _)] = await responses(reader, 1)
    assert status == 200 and headers[b"connection"] == b"close"
    writer.close()


async def test_a_handler_that_raises_is_a_plain_500_and_a_closed_connection(
    server: tuple[Scripted, int, uvicorn.Server],
) -> None:
    script, port, _ = server
    script.raise_once = True
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(join_request())
    [(status, headers, body)] = await responses(reader, 1)
    assert (status, headers[b"connection"], body) == (500, b"close", b"Internal Server Error")
    assert await asyncio.wait_for(reader.read(), GUARD) == b""
    writer.close()


async def test_a_join_still_running_when_the_drain_ends_is_a_json_503_not_a_500_and_a_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """uvicorn cancels what still runs at its graceful timeout (the drain's end): the
    cycle answers 503 UNAVAILABLE and closes, and logs no error (review s55: a 500 and
    an ERROR traceback per request)."""
    script = Scripted()
    script.release.clear()  # the handler holds the join past the drain
    asgi = script.asgi
    guard = ConnectionGuard(LIMITS, direct=DirectJoin(asgi, script.handler, script.abandoned.append, LIMIT))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    srv = uvicorn.Server(
        guard.uvicorn_config(asgi, access_log=False, timeout_graceful_shutdown=0.3, interface="asgi3")
    )
    task = asyncio.create_task(srv.serve(sockets=[sock]))
    try:
        while not srv.started:  # noqa: ASYNC110 - uvicorn has no startup event
            await asyncio.sleep(0.01)
        reader, writer = await asyncio.open_connection("127.0.0.1", sock.getsockname()[1])
        writer.write(join_request())
        while not script.bodies:  # noqa: ASYNC110 - the handler holds the join
            await asyncio.sleep(0.01)
        with caplog.at_level("INFO", logger="featurestore.api.join_cycle"):
            srv.should_exit = True
            [(status, headers, body)] = await responses(reader, 1)
            assert await asyncio.wait_for(reader.read(), GUARD) == b""  # closed
            await asyncio.wait_for(task, GUARD)
        writer.close()
    finally:
        srv.should_exit = True
        await asyncio.wait_for(task, GUARD)
        guard.close()
    assert (status, headers[b"connection"], headers[b"content-type"]) == (503, b"close", b"application/json")
    assert json.loads(body)["error"]["code"] == "UNAVAILABLE"
    assert [r.levelname for r in caplog.records if r.name == "featurestore.api.join_cycle"] == ["INFO"]


# -- the real join, both ways ------------------------------------------------------------


@pytest.fixture
async def real() -> AsyncIterator[tuple[HttpApi, int]]:
    api = await make_api()
    async with guarded_uvicorn(api, ConnectionGuard(LIMITS, direct=api.direct())) as port:
        yield api, port


@pytest.mark.parametrize(
    "body",
    [
        BODY,
        b'{"entities":{"user_id":[1, 2, 99999]},"features":["profile:score"]}',
        b'{"entities":{"user_id":["x"]},"features":["profile:score"]}',  # a 400
        b'{"entities":{"user_id":[1]},"features":["nope:score"]}',  # a 404
        b"not json",
    ],
    ids=["join", "not-found", "bad-key", "unknown-view", "not-json"],
)
async def test_the_direct_join_answers_what_the_asgi_join_answers(
    real: tuple[HttpApi, int], body: bytes
) -> None:
    api, port = real
    asgi_joins = 0
    asgi_join = api._join

    async def counting(scope: Any, receive: Any, send: Any) -> None:
        nonlocal asgi_joins
        asgi_joins += 1
        await asgi_join(scope, receive, send)

    api._join = counting  # type: ignore[method-assign]
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(join_request(body) + join_request(body, path=b"/v1/feature/join?asgi"))
    (s1, h1, b1), (s2, h2, b2) = await responses(reader, 2)
    writer.close()
    assert asgi_joins == 1  # the second only
    assert (s1, _without(h1, b"date"), _masked(b1)) == (s2, _without(h2, b"date"), _masked(b2))


@pytest.mark.parametrize("path", [b"/v1/feature/join", b"/v1/feature/join?asgi", b"/v1/feature/push"])
async def test_a_content_length_of_thousands_of_leading_zeros_is_read_as_its_number(
    real: tuple[HttpApi, int], path: bytes
) -> None:
    """llhttp takes leading zeros of any length; int() refuses more than 4,300 digits."""
    _, port = real
    push = b'{"feature_view":"profile","rows":{"user_id":[7],"age":[1],"country":["DE"],"score":[0.5]}}'
    body = BODY if path.startswith(b"/v1/feature/join") else push
    length = b"0" * 4400 + b"%d" % len(body)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"POST %s HTTP/1.1\r\nhost: t\r\ncontent-length: %s\r\n\r\n%s" % (path, length, body))
    [(status, headers, answer)] = await responses(reader, 1)
    writer.close()
    assert headers[b"content-type"] == b"application/json", answer
    assert status == 200, answer


async def test_a_length_of_thousands_of_leading_zeros_still_takes_the_direct_cycle(
    server: tuple[Scripted, int, uvicorn.Server],
) -> None:
    """Read as its number, not as "no length" (which would send the join through ASGI)."""
    script, port, _ = server
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    length = b"0" * 4400 + b"%d" % len(BODY)
    writer.write(
        b"POST /v1/feature/join HTTP/1.1\r\nhost: t\r\ncontent-length: %s\r\n\r\n%s" % (length, BODY)
    )
    [(status, _, _)] = await responses(reader, 1)
    writer.close()
    assert status == 200 and script.bodies == [BODY]


@pytest.mark.parametrize("path", [b"/v1/feature/join", b"/v1/feature/push"])
async def test_a_content_length_past_any_limit_is_a_413_unread(
    real: tuple[HttpApi, int], path: bytes
) -> None:
    _, port = real
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        b"POST %s HTTP/1.1\r\nhost: t\r\ncontent-length: %s\r\n\r\n{}" % (path, b"9" * 19)
    )  # (llhttp refuses past 2**64)
    [(status, headers, answer)] = await responses(reader, 1)
    writer.close()
    assert (status, headers.get(b"connection")) == (413, b"close"), answer


async def test_the_server_process_answers_joins_directly(tmp_path: Path) -> None:
    """process.py wires the direct cycle to the app uvicorn serves (with the access log
    off, uvicorn serves that very object: no middleware around it)."""
    from featurestore.process import Listeners
    from featurestore.runtime import build_runtime
    from tests.support import one_view_listener_config

    config = await one_view_listener_config(tmp_path)
    rt = await build_runtime(config)
    try:
        listeners = Listeners(rt)
        try:
            served = listeners.http.config
            served.load()
            assert listeners.guard.direct is not None
            assert served.loaded_app is listeners.guard.direct.app
            assert not served.access_log
        finally:
            listeners.sock.close()
            await listeners.grpc.stop(None)
            listeners.guard.close()
    finally:
        await rt.close()


def _write_timeouts() -> float:
    """Connections this process closed on their write timeout, so far."""
    value = prometheus_client.REGISTRY.get_sample_value(
        "featurestore_http_connections_closed_total", {"reason": "write_timeout"}
    )
    return value or 0.0


def _without(headers: dict[bytes, bytes], name: bytes) -> dict[bytes, bytes]:
    return {k: v for k, v in headers.items() if k != name}


def _masked(body: bytes, fields: Sequence[bytes] = (b'"trace_id":"',)) -> bytes:
    """The body with each trace id blanked (each request has its own)."""
    for field in fields:
        at = body.find(field)
        if at >= 0:
            end = body.index(b'"', at + len(field))
            body = body[: at + len(field)] + body[end:]
    return body
