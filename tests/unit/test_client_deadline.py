"""The client's deadline bounds a whole HTTP try, not each phase: a server that
trickles its answer, each piece within httpx's per-read timeout, still ends the join
with DeadlineExceededError at the deadline rather than answering seconds later. Real
sockets, a real (if slow) HTTP server."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from typing import Any

import httpcore
import pytest

from featurestore.client import AsyncFeatureClient, DeadlineExceededError, FeatureClient, JoinResult
from featurestore.client.deadline import _Backend, deadline_transport
from featurestore.client.options import server_deadline_ms

BODY = (
    b'{"metadata":{"feature_names":["item_id"],"registry_version":1,"trace_id":"x","partial":false},'
    b'"results":[{"values":[1],"statuses":["PRESENT"],"event_timestamps":[null]}]}'
)
HEAD = [b"HTTP/1.1 200 OK\r\n", b"content-type: application/json\r\n", b"content-length: %d\r\n" % len(BODY)]
PAUSE = 0.4  # between pieces: far inside the read timeout, the whole answer ~2.5 s


class Trickle:
    """An HTTP server answering each connection in turn as ``modes`` says: ``body`` (the
    head at once, then the body 40 bytes a pause), ``head`` (a header line a pause) or
    ``prompt`` (all at once)."""

    def __init__(self, *modes: str) -> None:
        self.modes = list(modes)
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        for mode in self.modes:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._answer, args=(conn, mode), daemon=True).start()

    @staticmethod
    def _answer(conn: socket.socket, mode: str) -> None:
        head = [*HEAD, *(b"x-pad: %d\r\n" % i for i in range(6)), b"\r\n"]
        if mode == "head":
            pieces = [*head, BODY]
        elif mode == "body":
            pieces = [b"".join(head), *(BODY[i : i + 40] for i in range(0, len(BODY), 40))]
        else:
            pieces = [b"".join(head) + BODY]
        try:
            conn.recv(65536)
            for n, piece in enumerate(pieces):
                if n and mode != "prompt":
                    time.sleep(PAUSE)
                conn.sendall(piece)
            conn.recv(1)  # until the client hangs up
        except OSError:
            pass
        finally:
            conn.close()

    def close(self) -> None:
        self.sock.close()


@pytest.mark.parametrize("mode", ["body", "head"])
def test_a_server_trickling_its_answer_ends_the_blocking_join_at_the_deadline(mode: str) -> None:
    server = Trickle(mode)
    try:
        with FeatureClient(server.url, retries=0) as client, pytest.raises(DeadlineExceededError):
            client.join({"item_id": [1]}, ["item:price"], deadline=0.5)
    finally:
        server.close()


@pytest.mark.parametrize("mode", ["body", "head"])
def test_a_server_trickling_its_answer_ends_the_asyncio_join_at_the_deadline(mode: str) -> None:
    server = Trickle(mode)

    async def join() -> JoinResult:
        async with AsyncFeatureClient(server.url, retries=0) as client:
            return await client.join({"item_id": [1]}, ["item:price"], deadline=0.5)

    try:
        with pytest.raises(DeadlineExceededError):
            asyncio.run(join())
    finally:
        server.close()


def test_after_a_try_cut_at_its_deadline_the_client_joins_again() -> None:
    server = Trickle("body", "prompt")
    try:
        with FeatureClient(server.url, retries=0) as client:
            with pytest.raises(DeadlineExceededError):
                client.join({"item_id": [1]}, ["item:price"], deadline=0.5)
            result = client.join({"item_id": [1]}, ["item:price"], deadline=5)
        assert result.to_dict() == {"item_id": [1]}
    finally:
        server.close()


class Blackholes:
    """Listeners whose accept queue is full: the kernel drops further SYNs, so a connect
    hangs until its timeout, as to an address behind a firewall that drops them."""

    def __init__(self, n: int) -> None:
        self.sockets: list[socket.socket] = []
        self.ports = []
        for _ in range(n):
            listener = socket.socket()
            listener.bind(("127.0.0.1", 0))
            listener.listen(0)
            port = listener.getsockname()[1]
            self.sockets.append(listener)
            for _ in range(3):  # (never accepted) fill the queue
                filler = socket.socket()
                filler.setblocking(False)
                filler.connect_ex(("127.0.0.1", port))
                self.sockets.append(filler)
            self.ports.append(port)
        time.sleep(0.05)
        with socket.socket() as probe:  # the premise: a connect to one times out
            probe.settimeout(0.2)
            with pytest.raises(TimeoutError):
                probe.connect(("127.0.0.1", self.ports[0]))

    def close(self) -> None:
        for s in self.sockets:
            s.close()


def resolving(monkeypatch: pytest.MonkeyPatch, name: str, addresses: list[tuple[str, int]]) -> None:
    """``name`` resolves to ``addresses`` (only the DNS answer is made up; the connects are real)."""
    real = socket.getaddrinfo

    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host == name:
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", address) for address in addresses]
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


ADDRESSES = 4  # a round-robin name whose pods are all gone behind a firewall
DEADLINE = 0.5
LATE = 0.75  # a loaded host's margin past the deadline; the client that gave each address the
# whole time left took ADDRESSES x DEADLINE = 2 s


def test_a_name_of_several_addresses_that_drop_syns_is_given_the_deadline_once_not_each(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    holes = Blackholes(ADDRESSES)
    try:
        resolving(monkeypatch, "features.test", [("127.0.0.1", port) for port in holes.ports])
        with FeatureClient(f"http://features.test:{holes.ports[0]}", retries=0) as client:
            started = time.monotonic()
            with pytest.raises(DeadlineExceededError):
                client.join({"item_id": [1]}, ["item:price"], deadline=DEADLINE)
            elapsed = time.monotonic() - started
    finally:
        holes.close()
    assert DEADLINE * 0.9 <= elapsed < DEADLINE + LATE, elapsed


def test_an_address_that_refuses_is_passed_over_for_the_next_one(monkeypatch: pytest.MonkeyPatch) -> None:
    server = Trickle("prompt")
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        refusing = closed.getsockname()[1]  # bound, not listening: refused
        port = int(server.url.rsplit(":", 1)[1])
        resolving(monkeypatch, "features.test", [("127.0.0.1", refusing), ("127.0.0.1", port)])
        try:
            with FeatureClient(f"http://features.test:{port}", retries=0) as client:
                result = client.join({"item_id": [1]}, ["item:price"], deadline=5)
        finally:
            server.close()
    assert result.to_dict() == {"item_id": [1]}


def test_the_blocking_transport_does_its_io_through_the_deadline_backend() -> None:
    """deadline_transport sets httpx's and httpcore's private attributes
    (``HTTPTransport._pool``, ``ConnectionPool._network_backend``): this fails when a
    new httpx or httpcore renames them (the transport would then warn instead)."""
    for proxy in (None, "http://127.0.0.1:3128"):
        transport = deadline_transport(True, proxy)
        pool = transport._pool
        assert isinstance(pool, httpcore.ConnectionPool)
        assert isinstance(pool._network_backend, _Backend)
        transport.close()


def test_the_deadline_header_tells_the_server_the_whole_time_left() -> None:
    """The server keeps the answer's margin of it itself, as of a gRPC deadline: the
    client taking one off too left an HTTP join's reads 81% of its time, not 90%."""
    assert server_deadline_ms(0.05) == "50"
    assert server_deadline_ms(0.5004) == "500"
    assert server_deadline_ms(0.0002) == "1"  # the header's least
    assert server_deadline_ms(3600.0) == "60000"  # and its most
