"""How the read path's own Redis connection (sources/redis_connection.py) sets itself up
against real redis-servers: TLS verification (its own code now, not redis-py's), ACL
users with and without a password, and a server that turns the connection away."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from redis import exceptions as redis_errors

from featurestore.sources.redis_connection import ReadConnection, Target, classify
from featurestore.sources.redis_wire import pack_command
from tests.security import Certs, SecureRedisServer, make_certs
from tests.servers import RedisServer


async def whoami(conn: ReadConnection) -> Any:
    replies: list[Any] = []
    await conn.request(pack_command("ACL", "WHOAMI"), (1,), lambda _, got: replies.extend(got))
    if isinstance(replies[0], redis_errors.ResponseError):  # as the store's reads do
        raise classify(replies[0])
    return replies[0]


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[SecureRedisServer, Certs]]:
    work = tmp_path_factory.mktemp("tls-redis")
    certs = make_certs(work / "certs")
    server = SecureRedisServer(work / "redis", certs).start()
    try:
        yield server, certs
    finally:
        server.stop()


def tls_connection(server: SecureRedisServer, url: str | None = None, **options: Any) -> ReadConnection:
    auth = {"username": server.USER, "password": server.PASSWORD}
    return ReadConnection(Target.from_url(url or server.url, 2.0, **auth, **options))


async def test_over_tls_a_server_whose_ca_is_given_is_trusted(tls: tuple[SecureRedisServer, Certs]) -> None:
    server, certs = tls
    conn = tls_connection(server, ssl_ca_certs=str(certs.ca))
    try:
        assert await whoami(conn) == server.USER.encode()
    finally:
        conn.disconnect()


@pytest.mark.parametrize("options", [{}, {"ssl_check_hostname": False}], ids=["default", "no-hostname-check"])
async def test_over_tls_a_certificate_of_another_ca_is_refused(
    tls: tuple[SecureRedisServer, Certs], options: dict[str, Any]
) -> None:
    server, certs = tls
    conn = tls_connection(server, ssl_ca_certs=str(certs.other_ca), **options)
    with pytest.raises(redis_errors.ConnectionError, match="CERTIFICATE_VERIFY_FAILED"):
        await whoami(conn)
    assert not conn.connected


async def test_over_tls_the_systems_cas_are_trusted_beside_the_given_one_as_with_redis_py(
    tls: tuple[SecureRedisServer, Certs], monkeypatch: pytest.MonkeyPatch
) -> None:
    server, certs = tls
    monkeypatch.setenv("SSL_CERT_FILE", str(certs.ca))  # the system's CAs, as OpenSSL reads them
    conn = tls_connection(server, ssl_ca_certs=str(certs.other_ca))
    try:
        assert await whoami(conn) == server.USER.encode()
    finally:
        conn.disconnect()


async def test_over_tls_cert_reqs_none_in_the_url_skips_verification_as_with_redis_py(
    tls: tuple[SecureRedisServer, Certs],
) -> None:
    server, certs = tls
    conn = tls_connection(server, server.url + "?ssl_cert_reqs=none", ssl_ca_certs=str(certs.other_ca))
    try:
        assert await whoami(conn) == server.USER.encode()
    finally:
        conn.disconnect()


@pytest.fixture
def server(own_redis: RedisServer) -> RedisServer:
    return own_redis


async def test_an_acl_user_without_a_password_logs_in_as_that_user_not_as_default(
    server: RedisServer,
) -> None:
    server.cli("ACL", "SETUSER", "alice", "on", "nopass", "~*", "+@all")
    conn = ReadConnection(Target.from_url(server.url, 1.0, username="alice"))
    try:
        server.cli("ACL", "SETUSER", "default", "off")  # (redis-cli's own connection is open already)
        assert await whoami(conn) == b"alice"
    finally:
        conn.disconnect()


async def test_a_server_at_maxclients_fails_the_read_at_once_in_its_own_words(server: RedisServer) -> None:
    first = ReadConnection(Target.from_url(server.url, 1.0))
    second = ReadConnection(Target.from_url(server.url, 1.0))
    try:
        assert await whoami(first) == b"default"  # one client: this one
        server.cli("CONFIG", "SET", "maxclients", "1")  # (redis-cli's connection ends with its command)
        async with asyncio.timeout(5):  # (a read that waited for replies that never come would hang)
            with pytest.raises(redis_errors.ConnectionError, match="max number of clients reached"):
                await whoami(second)
    finally:
        first.disconnect()
        second.disconnect()
