"""The read path's own Redis connection (sources/redis_connection.py) on a real
redis-server: replies in order, the handshake (AUTH, SELECT, CLIENT SETNAME, unix
sockets), and what a caller sees when the socket goes or the server is not Redis."""

from __future__ import annotations

import asyncio
import random
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis import exceptions as redis_errors

from featurestore.sources.redis_connection import ReadConnection, Target, _Request, _Wire, classify
from featurestore.sources.redis_pool import LeanPool
from featurestore.sources.redis_read import exchange
from featurestore.sources.redis_wire import pack_command, pack_mget
from tests.harness import free_port
from tests.servers import RedisServer
from tests.support import REDIS_CONNECT_MS, eventually


async def ask(conn: ReadConnection, *commands: tuple[str, ...]) -> list[Any]:
    replies: list[Any] = []
    packed = b"".join(pack_command(*c) for c in commands)
    await conn.request(packed, (len(commands),), lambda _, got: replies.extend(got))
    return replies


def connection(url: str, **options: Any) -> ReadConnection:
    # a 5 s connect timeout: on the loaded CI machine a localhost connect ran past 250 ms
    return ReadConnection(Target.from_url(url, REDIS_CONNECT_MS / 1000, **options))


@pytest.fixture
def server(own_redis: RedisServer) -> RedisServer:
    return own_redis


async def test_many_requests_in_flight_on_one_connection_each_get_their_own_replies_in_groups(
    server: RedisServer,
) -> None:
    server.cli("MSET", *(x for i in range(200) for x in (f"k{i}", f"v{i}")))
    conn = connection(server.url)
    try:

        async def one(seed: int) -> None:
            rnd = random.Random(seed)
            groups = [
                [f"k{rnd.randrange(250)}" for _ in range(rnd.randint(1, 60))]
                for _ in range(rnd.randint(1, 4))
            ]
            got: list[tuple[int, list[Any]]] = []
            await conn.request(
                b"".join(map(pack_mget, groups)), [1] * len(groups), lambda i, r: got.append((i, r))
            )
            want = [[f"v{k[1:]}".encode() if int(k[1:]) < 200 else None for k in g] for g in groups]
            assert got == [(i, [w]) for i, w in enumerate(want)]

        await asyncio.gather(*(one(s) for s in range(300)))
    finally:
        conn.disconnect()


async def test_a_socket_the_server_closed_while_idle_is_opened_again_without_failing_a_request(
    server: RedisServer,
) -> None:
    conn = connection(server.url + "?client_name=idle")
    try:
        assert await ask(conn, ("PING",)) == [b"PONG"]
        assert server.kill_clients("idle", "ping") == 1
        await eventually(lambda: not conn.connected, 2, "the close noticed while idle")
        assert await ask(conn, ("PING",)) == [b"PONG"]
    finally:
        conn.disconnect()


async def test_requests_waiting_when_the_connection_is_lost_fail_with_a_connection_error(
    server: RedisServer,
) -> None:
    conn = connection(server.url)
    try:
        await ask(conn, ("PING",))
        server.pause()
        waiting = asyncio.ensure_future(ask(conn, ("PING",)))
        await asyncio.sleep(0.05)
        conn.disconnect()
        with pytest.raises(redis_errors.ConnectionError):
            await waiting
    finally:
        server.resume()
        conn.disconnect()


async def test_an_acl_user_a_database_and_a_client_name_are_set_up_before_the_first_request(
    server: RedisServer,
) -> None:
    server.cli("ACL", "SETUSER", "reader", "on", ">s3cret", "~*", "+@all")
    server.cli("-n", "3", "SET", "only-in-3", "yes")
    conn = connection(
        f"redis://127.0.0.1:{server.port}/3?client_name=named", username="reader", password="s3cret"
    )
    try:
        assert await ask(conn, ("GET", "only-in-3"), ("CLIENT", "GETNAME"), ("ACL", "WHOAMI")) == [
            b"yes",
            b"named",
            b"reader",
        ]
    finally:
        conn.disconnect()


async def test_a_wrong_password_is_an_authentication_error(server: RedisServer) -> None:
    server.cli("ACL", "SETUSER", "reader", "on", ">s3cret", "~*", "+@all")
    conn = connection(server.url, username="reader", password="wrong")
    with pytest.raises(redis_errors.AuthenticationError, match="WRONGPASS"):
        await ask(conn, ("PING",))
    assert not conn.connected


async def test_a_unix_socket_url_connects(server: RedisServer) -> None:
    conn = connection(server.unix_url)
    try:
        assert await ask(conn, ("PING",)) == [b"PONG"]
    finally:
        conn.disconnect()


async def test_a_refused_connection_is_a_connection_error_naming_where() -> None:
    unused_port = free_port()  # reserved, nothing listens on it
    conn = connection(f"redis://127.0.0.1:{unused_port}/0")
    with pytest.raises(redis_errors.ConnectionError, match=f"127.0.0.1:{unused_port}"):
        await ask(conn, ("PING",))


@pytest.fixture
async def silent() -> AsyncIterator[tuple[int, list[asyncio.StreamWriter]]]:
    """A TCP server that accepts and then never says a word (or says what a test writes)."""
    writers: list[asyncio.StreamWriter] = []

    async def accept(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)

    srv = await asyncio.start_server(accept, "127.0.0.1", 0)
    try:
        yield srv.sockets[0].getsockname()[1], writers
    finally:
        for w in writers:
            w.close()
        srv.close()


async def test_a_handshake_nobody_answers_ends_at_the_connect_timeout(
    silent: tuple[int, list[asyncio.StreamWriter]],
) -> None:
    port, _ = silent
    conn = ReadConnection(Target.from_url(f"redis://127.0.0.1:{port}/0", 0.2, password="x"))
    with pytest.raises(redis_errors.TimeoutError, match=f"127.0.0.1:{port}"):
        async with asyncio.timeout(5):
            await ask(conn, ("PING",))


async def test_a_reply_nobody_asked_for_drops_the_connection_and_fails_what_waits(
    silent: tuple[int, list[asyncio.StreamWriter]],
) -> None:
    port, writers = silent
    conn = connection(f"redis://127.0.0.1:{port}/0")
    waiting = asyncio.ensure_future(ask(conn, ("PING",)))
    await eventually(lambda: bool(writers), 2, "accepted")
    writers[0].write(b"+PONG\r\n+EXTRA\r\n")  # one reply too many
    assert await waiting == [b"PONG"]
    await eventually(lambda: not conn.connected, 2, "out of step: dropped")
    writers[0].write(b"?not resp\r\n")


def test_error_replies_get_the_classes_redis_py_gives_them() -> None:
    assert isinstance(
        classify(redis_errors.ResponseError("LOADING Redis is loading")), redis_errors.BusyLoadingError
    )
    assert isinstance(classify(redis_errors.ResponseError("NOPERM no")), redis_errors.NoPermissionError)
    plain = redis_errors.ResponseError("WRONGTYPE Operation against a key")
    assert classify(plain) is plain


def test_a_url_option_the_read_path_does_not_know_fails_naming_it() -> None:
    with pytest.raises(ValueError, match="'decode_responses'"):
        Target.from_url("redis://h:1/0?decode_responses=true", 1.0)


def test_a_pool_given_a_target_refuses_options_beside_it_rather_than_ignore_them() -> None:
    """A Target is made with its timeout and options (a Cluster node's): options given
    beside it were dropped without a word (a carry-over since s56)."""
    target = Target.from_url("redis://h:1/0", 1.0)
    with pytest.raises(TypeError, match=r"Target\.from_url"):
        LeanPool(target, 2, username="reader")
    with pytest.raises(TypeError, match=r"Target\.from_url"):
        LeanPool(target, 2, 0.5)
    assert LeanPool(target, 2)._target is target
    assert LeanPool("redis://h:1/0", 2)._target.connect_timeout == 0.25


def test_redis_pys_timing_options_in_the_url_leave_reads_without_a_socket_timeout() -> None:
    target = Target.from_url(
        "redis://h:1/0?socket_timeout=3&health_check_interval=5&socket_connect_timeout=2", 1.0
    )
    assert target.connect_timeout == 2.0


async def test_the_pool_counts_every_socket_its_connections_open(server: RedisServer) -> None:
    opened: list[int] = []
    pool = LeanPool(server.url, 2, opened=lambda: opened.append(1))
    try:
        conn = await pool.acquire()
        assert await ask(conn, ("PING",)) == [b"PONG"]
        assert await ask(conn, ("PING",)) == [b"PONG"]  # the same socket
        conn.disconnect()  # as a read given up on mid-way drops it
        assert await ask(conn, ("PING",)) == [b"PONG"]
        pool.release(conn)
        assert len(opened) == 2
    finally:
        await pool.close()


async def test_a_connection_dropped_while_it_opens_does_not_keep_the_new_socket(server: RedisServer) -> None:
    conn = connection(server.url + "?client_name=dropped")
    opening = asyncio.ensure_future(ask(conn, ("PING",)))
    await asyncio.sleep(0)  # under way
    conn.disconnect()
    with pytest.raises(redis_errors.ConnectionError):
        await opening
    assert not conn.connected
    await eventually(lambda: "name=dropped " not in server.cli("CLIENT", "LIST"), 2, "the socket closed")


async def test_a_read_that_gave_up_while_its_connection_opened_does_not_fail_the_next_one(
    silent: tuple[int, list[asyncio.StreamWriter]],
) -> None:
    port, writers = silent
    conn = ReadConnection(Target.from_url(f"redis://127.0.0.1:{port}/0", 2.0, password="pw"))
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.05):  # the handshake is not answered yet
            await ask(conn, ("PING",))
    conn.disconnect()  # as the store does with a read given up on
    later = asyncio.ensure_future(ask(conn, ("PING",)))  # opens a socket of its own
    await eventually(lambda: len(writers) == 2, 2, "a second socket")
    writers[1].write(b"+OK\r\n")  # AUTH
    await eventually(lambda: conn.connected, 2, "set up")
    await asyncio.sleep(0.05)  # the PING sent
    writers[1].write(b"+PONG\r\n")
    assert await asyncio.wait_for(later, 2) == [b"PONG"]
    conn.disconnect()


async def test_a_server_that_accepts_and_closes_fails_the_read_at_once(
    silent: tuple[int, list[asyncio.StreamWriter]],
) -> None:
    port, writers = silent
    conn = connection(f"redis://127.0.0.1:{port}/0")

    async def close_at_once() -> None:  # as a proxy with no backend does
        await eventually(lambda: bool(writers), 2, "accepted")
        writers[0].close()

    closer = asyncio.ensure_future(close_at_once())
    async with asyncio.timeout(5):  # (a request queued on the lost socket would wait forever)
        with pytest.raises(redis_errors.ConnectionError):
            await ask(conn, ("PING",))
    await closer


async def test_an_exchange_given_up_on_a_frozen_redis_drops_its_connection_and_the_next_read_is_answered(
    server: RedisServer,
) -> None:
    opened: list[int] = []
    pool = LeanPool(server.url, 1, opened=lambda: opened.append(1))
    try:
        assert await exchange(pool, pack_command("PING"), 1) == [b"PONG"]
        server.pause()
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.1):
                await exchange(pool, pack_command("PING"), 1)
        server.resume()
        assert await asyncio.wait_for(exchange(pool, pack_command("ECHO", "x"), 1), 2) == [b"x"]
        assert pool.busy == 0 and len(opened) == 2  # the given-up read's socket was not reused
    finally:
        server.resume()
        await pool.close()


async def test_a_tcp_read_connection_has_keepalive_on(server: RedisServer) -> None:
    conn = connection(server.url)
    try:
        await ask(conn, ("PING",))
        sock = conn._wire.transport.get_extra_info("socket")  # type: ignore[union-attr]  # (our own class)
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
    finally:
        conn.disconnect()


async def test_reads_that_give_up_on_a_slow_connect_do_not_each_open_a_socket(
    silent: tuple[int, list[asyncio.StreamWriter]],
) -> None:
    port, writers = silent  # accepts, never answers the AUTH: the connect hangs to its timeout
    # 30 s: the test is about the reads sharing one connect, not its length (ten give-ups of
    # 20 ms could take 2 s on the loaded CI machine, and a second connect then begin)
    pool = LeanPool(f"redis://127.0.0.1:{port}/0", 1, socket_connect_timeout=30.0, password="pw")
    try:
        for _ in range(10):
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.02):
                    await exchange(pool, pack_command("PING"), 1)
        await asyncio.sleep(0.05)
        assert len(writers) == 1 and pool.busy == 0  # the one connect goes on for the next read
    finally:
        await pool.close()


def test_a_request_queued_on_a_socket_already_lost_fails_at_once() -> None:
    async def main() -> None:
        wire = _Wire()
        wire.connection_lost(redis_errors.ConnectionError("ERR max number of clients reached"))
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        wire.add(_Request((1,), None, done))  # (a request that waited for the connect)
        assert done.done() and "max number of clients" in str(done.exception())
        assert not wire.pending

    asyncio.run(main())
