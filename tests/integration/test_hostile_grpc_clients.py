"""Idle, aged, silent, ping-flooding and oversized gRPC clients cannot hold a real
server process: grpc core closes each as configured (raw HTTP/2 frames on a socket, or
a real grpc client), and the server keeps answering calls meanwhile. A call whose
message never comes ends at limits.deadline_ms; a connection may open only
grpc.max_concurrent_streams calls at once."""

from __future__ import annotations

import json
import socket
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from featurestore.v1 import featurestore_pb2 as pb
from featurestore.v1 import featurestore_pb2_grpc as pbg
from tests.support import ServerProcess

LIMITS = {
    "max_connection_idle_seconds": 2,  # longer than the handshake timeout: a silent socket meets that first
    "max_connection_age_seconds": 3,  # an aged connection has a call open, so it is not idle
    "max_connection_age_grace_seconds": 1,
    "max_metadata_bytes": 4096,
    "handshake_timeout_seconds": 1,
    "min_ping_interval_seconds": 10,
    "max_ping_strikes": 2,
    "max_concurrent_streams": 8,
}
# Past the aged connection's age and grace (3 s +-10%, then 1 s): its call, whose message
# never comes, is still open when the age limit closes the connection.
DEADLINE_MS = 5000
SHORT_DEADLINE_MS = 300  # the server of the calls whose message never comes
GUARD = 30.0  # seconds; only turns a connection that is never closed into a failure

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
HEADERS, SETTINGS, PING, GOAWAY = 1, 4, 6, 7
NO_ERROR, ENHANCE_YOUR_CALM = 0, 11  # HTTP/2 error codes


@pytest.fixture(scope="module")
def guarded(test_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    work = tmp_path_factory.mktemp("hostile-grpc")
    config = work / "config.yaml"
    config.write_text(
        f"registry: {{path: {work / 'registry'}}}\n"
        "stores: {default: {kind: memory}, local: {kind: memory}}\n"
        f"grpc: {json.dumps(LIMITS)}\n"
        f"limits: {{deadline_ms: {DEADLINE_MS}}}\n"
    )
    proc = ServerProcess(
        ["--config", str(config), "--definitions", str(test_repo)], log_path=work / "server.log"
    ).start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def short_deadline(test_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """Default connection limits, a short limits.deadline_ms."""
    work = tmp_path_factory.mktemp("short-deadline-grpc")
    config = work / "config.yaml"
    config.write_text(
        f"registry: {{path: {work / 'registry'}}}\n"
        "stores: {default: {kind: memory}, local: {kind: memory}}\n"
        f"limits: {{deadline_ms: {SHORT_DEADLINE_MS}}}\n"
    )
    proc = ServerProcess(
        ["--config", str(config), "--definitions", str(test_repo)], log_path=work / "server.log"
    ).start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def stub(guarded: ServerProcess) -> Iterator[pbg.FeatureServiceStub]:
    with grpc.insecure_channel(guarded.grpc_target) as channel:
        yield pbg.FeatureServiceStub(channel)  # type: ignore[no-untyped-call]


def frame(kind: int, payload: bytes = b"", flags: int = 0, stream: int = 0) -> bytes:
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload


def literal(name: bytes, value: bytes) -> bytes:
    """An HPACK header field, literal and not indexed (names and values under 127 bytes)."""
    return b"\x00" + bytes([len(name)]) + name + bytes([len(value)]) + value


def goaways_until_closed(sock: socket.socket) -> list[tuple[int, bytes]]:
    """(error code, debug text) of every GOAWAY the server sends until it closes."""
    buffer, goaways = b"", []
    try:
        while chunk := sock.recv(65536):
            buffer += chunk
            while len(buffer) >= 9 and len(buffer) >= 9 + int.from_bytes(buffer[:3], "big"):
                size = int.from_bytes(buffer[:3], "big")
                if buffer[3] == GOAWAY:
                    payload = buffer[9 : 9 + size]
                    goaways.append((int.from_bytes(payload[4:8], "big"), payload[8:]))
                buffer = buffer[9 + size :]
    except ConnectionResetError:
        pass
    except TimeoutError:
        pytest.fail(f"the server did not close the connection within {GUARD} s; GOAWAYs so far: {goaways}")
    finally:
        sock.close()
    return goaways


def connect(server: ServerProcess, send: bytes = b"") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.grpc_port), timeout=GUARD)
    sock.settimeout(GUARD)
    sock.sendall(send)
    return sock


def assert_calls_are_answered(stub: pbg.FeatureServiceStub) -> None:
    req = pb.JoinRequest(features=["user_profile:age"])
    req.entities.add(name="user_id").int64_values.values.append(1)
    assert stub.Join(req, timeout=10).metadata.feature_names == ["user_id", "age"]


def test_a_connection_that_never_speaks_http2_is_closed(
    guarded: ServerProcess, stub: pbg.FeatureServiceStub
) -> None:
    sock = connect(guarded)
    assert_calls_are_answered(stub)
    goaways = goaways_until_closed(sock)
    assert any(b"handshake timeout" in text for _, text in goaways), goaways


def test_an_idle_connection_gets_a_goaway_and_is_closed(
    guarded: ServerProcess, stub: pbg.FeatureServiceStub
) -> None:
    sock = connect(guarded, PREFACE + frame(SETTINGS))
    assert_calls_are_answered(stub)
    assert any(b"idle" in text for _, text in goaways_until_closed(sock))


def test_an_aged_connection_with_a_call_open_gets_a_goaway_then_is_closed(
    guarded: ServerProcess, stub: pbg.FeatureServiceStub
) -> None:
    """A call that never sends its message keeps the connection from being idle; the age
    limit sends GOAWAY, and after the grace the connection is closed with the call."""
    headers = b"".join(
        literal(name, value)
        for name, value in [
            (b":method", b"POST"),
            (b":scheme", b"http"),
            (b":path", b"/featurestore.v1.FeatureService/Join"),
            (b":authority", b"t"),
            (b"content-type", b"application/grpc"),
            (b"te", b"trailers"),
        ]
    )
    sock = connect(guarded, PREFACE + frame(SETTINGS) + frame(HEADERS, headers, flags=0x4, stream=1))
    assert_calls_are_answered(stub)
    goaways = goaways_until_closed(sock)
    assert (NO_ERROR, b"max_age") in goaways


def test_a_ping_flood_gets_goaway_enhance_your_calm(
    guarded: ServerProcess, stub: pbg.FeatureServiceStub
) -> None:
    sock = connect(guarded, PREFACE + frame(SETTINGS))
    for _ in range(LIMITS["max_ping_strikes"] + 2):
        sock.sendall(frame(PING, b"12345678"))
    assert (ENHANCE_YOUR_CALM, b"too_many_pings") in goaways_until_closed(sock)
    assert_calls_are_answered(stub)


def test_metadata_over_the_limit_is_resource_exhausted(stub: pbg.FeatureServiceStub) -> None:
    req = pb.JoinRequest(features=["user_profile:age"])
    req.entities.add(name="user_id").int64_values.values.append(1)
    with pytest.raises(grpc.RpcError) as info:
        stub.Join(req, timeout=10, metadata=[("x-big", "a" * 100_000)])
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "metadata size exceeds" in (info.value.details() or "")
    assert_calls_are_answered(stub)


def settings_of(sock: socket.socket) -> dict[int, int]:
    """The server's first SETTINGS frame (not an ACK): setting id -> value."""
    buffer = b""
    while True:
        chunk = sock.recv(65536)
        assert chunk, "the server closed the connection before its SETTINGS"
        buffer += chunk
        while len(buffer) >= 9 and len(buffer) >= 9 + int.from_bytes(buffer[:3], "big"):
            size = int.from_bytes(buffer[:3], "big")
            kind, flags, payload = buffer[3], buffer[4], buffer[9 : 9 + size]
            buffer = buffer[9 + size :]
            if kind == SETTINGS and not flags & 0x1:
                return {
                    int.from_bytes(payload[i : i + 2], "big"): int.from_bytes(payload[i + 2 : i + 6], "big")
                    for i in range(0, len(payload), 6)
                }


def test_a_connection_may_open_only_max_concurrent_streams_calls(guarded: ServerProcess) -> None:
    sock = connect(guarded, PREFACE + frame(SETTINGS))
    try:
        max_concurrent_streams = 0x3  # the HTTP/2 setting's id
        assert settings_of(sock).get(max_concurrent_streams) == LIMITS["max_concurrent_streams"]
    finally:
        sock.close()


@pytest.mark.parametrize("method", ["Join", "Push"])
def test_a_call_whose_message_never_comes_ends_deadline_exceeded_at_the_configured_deadline(
    short_deadline: ServerProcess, method: str
) -> None:
    """No client deadline: only the server's limits.deadline_ms, counted from the call's
    start, ends it (it used to hold its stream and handler for as long as the client
    kept the connection open, beyond the reach of the in-flight cap)."""
    never = threading.Event()

    def no_message() -> Iterator[bytes]:
        never.wait(GUARD)  # then ends without a message
        yield from ()

    with grpc.insecure_channel(short_deadline.grpc_target) as channel:
        call = channel.stream_unary(f"/featurestore.v1.FeatureService/{method}")
        started = time.monotonic()
        future = call.future(no_message())
        try:
            with pytest.raises(grpc.RpcError) as info:
                future.result(timeout=GUARD)
        finally:
            never.set()
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED, info.value
    assert "did not arrive within limits.deadline_ms" in (info.value.details() or "")
    assert time.monotonic() - started >= SHORT_DEADLINE_MS / 1000 * 0.9  # not before: counted from its start
