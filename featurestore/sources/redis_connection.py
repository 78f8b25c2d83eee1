"""One connection of the Redis store's read path, on an ``asyncio.Protocol`` of its own:
every chunk that arrives goes to a hiredis reader at once, and a request's replies are
handed over as soon as they are whole, in order. redis-py's asyncio connection reads
through a stream reader with an await per reply. Measured against the commit before
(``python -m benchmarks.ab --old ec9b3e9``, 1 worker, wrk -c32, 2026-12-05;
benchmarks/results/redis-connection-ab-b*.md): batch 100 444 -> 414 µs of server CPU a
request (-6.7%; -9.4% for an earlier version), batch 1 132 -> 136 (+3.2%; -3.7%: no
change beyond the noise). In process (``python -m benchmarks.redis_protocol``) a join
of 16 in flight reads in 87.4 µs at batch 100 against 96.7 on a redis-py connection,
10.6 against 20.5 at batch 1 (2026-12-05 08:10; 75.5 / 87.2 and 10.3 / 19.8 at 04:22).
Writes, SCANs and the health probe stay on redis-py's client.

What redis-py's connection did for these reads, done here: TCP (keepalive on), TLS
(``rediss://``, the store's ``ssl_*`` options or the URL's; the system's CAs and the
given one), unix sockets, AUTH (an ACL user, with or without a password, or a password
alone), SELECT, CLIENT SETNAME (``?client_name=``), a connect timeout around all of it.
RESP2, as redis-py speaks by default. Errors are redis-py's classes, so the store's
retry rules (``redis_pool.NOT_RETRIED``) read them as before: a refused or lost
connection is a ``ConnectionError`` (as is ``ERR max number of clients reached``), a
connect that times out a ``TimeoutError``, a refused AUTH an ``AuthenticationError``,
an error reply a ``ResponseError`` (``LOADING``: ``BusyLoadingError``, ``NOPERM``:
``NoPermissionError``; ``_ERROR_CLASSES``). Not done: redis-py's fallback for Redis
before 6 (``AUTH user password`` refused, ``AUTH password`` tried): there the read path
needs a password without a user.
"""

from __future__ import annotations

import asyncio
import collections
import socket
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import hiredis
from redis import exceptions as redis_errors
from redis.connection import parse_url

from featurestore.addresses import REDIS_URL_IGNORED, REDIS_URL_OPTIONS
from featurestore.sources.redis_wire import pack_command
from featurestore.tls_files import refuse_passphrase  # never OpenSSL's prompt

# Per reply group: called with the group's index and its replies when they are whole.
OnGroup = Callable[[int, list[Any]], None]

# Error replies redis-py raises as a class of their own that the store tells apart (its
# connection and authentication errors decide retries and the circuit): by the reply's
# first word, and for ``ERR`` by the whole rest of the message. The same classes as
# redis-py's parser gives them (tests/unit/test_redis_errors.py checks each against it).
_ERROR_CLASSES: dict[str, type[redis_errors.RedisError]] = {
    "LOADING": redis_errors.BusyLoadingError,
    "NOPERM": redis_errors.NoPermissionError,
    "NOAUTH": redis_errors.AuthenticationError,
    "WRONGPASS": redis_errors.AuthenticationError,
    "OOM": redis_errors.OutOfMemoryError,
    "READONLY": redis_errors.ReadOnlyError,
    "MASTERDOWN": redis_errors.MasterDownError,
}
_ERR_CLASSES: dict[str, type[redis_errors.RedisError]] = {
    "max number of clients reached": redis_errors.ConnectionError,
    "invalid password": redis_errors.AuthenticationError,
    "wrong number of arguments for 'auth' command": redis_errors.AuthenticationWrongNumberOfArgsError,
    "wrong number of arguments for 'AUTH' command": redis_errors.AuthenticationWrongNumberOfArgsError,
    "AUTH <password> called without any password configured for the default user. Are you sure "
    "your configuration is correct?": redis_errors.AuthenticationError,
    "Client sent AUTH, but no password is set": redis_errors.AuthenticationError,
    "problem with LDAP service": redis_errors.ExternalAuthProviderError,
}
# The URL's query arguments this connection honours (parse_url's names); others fail the start.
_CERT_REQS = {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL, "required": ssl.CERT_REQUIRED}


def classify(error: redis_errors.ResponseError) -> redis_errors.RedisError:
    """An error reply as the class redis-py would raise for it (with the whole text)."""
    text = str(error)
    code, _, rest = text.partition(" ")
    cls = _ERR_CLASSES.get(rest) if code == "ERR" else _ERROR_CLASSES.get(code)
    return error if cls is None else cls(text)


@dataclass(frozen=True, slots=True)
class Target:
    """Where a read connection goes and how it introduces itself."""

    host: str = "127.0.0.1"
    port: int = 6379
    path: str = ""  # a unix socket
    tls: ssl.SSLContext | None = None
    server_hostname: str | None = None
    handshake: bytes = b""  # AUTH and SELECT, packed
    handshake_replies: int = 0
    connect_timeout: float = 0.25

    @staticmethod
    def from_url(url: str, connect_timeout: float, **options: Any) -> Target:
        """From a store URL and its connection options (``RedisOptions.connection_kwargs``);
        a user or password in the URL wins over the options, as with redis-py."""
        parsed = parse_url(url)  # type: ignore[no-untyped-call]
        given = {**options, **{k: v for k, v in parsed.items() if v is not None}}
        for name in REDIS_URL_IGNORED:
            given.pop(name, None)
        if given.get("socket_connect_timeout") is not None:
            connect_timeout = float(given.pop("socket_connect_timeout"))
        unknown = sorted(set(given) - REDIS_URL_OPTIONS)
        if unknown:
            raise ValueError(f"redis url: option {unknown[0]!r} is not supported by the read path")
        tls = None
        if url.startswith("rediss://"):
            tls = _tls_context(given)
        commands: list[bytes] = []
        user, password = given.get("username"), given.get("password")
        if user:  # as redis-py: an ACL user logs in even without a password (a nopass user)
            commands.append(pack_command("AUTH", str(user), str(password or "")))
        elif password:
            commands.append(pack_command("AUTH", str(password)))
        db = int(given.get("db") or 0)
        if db:
            commands.append(pack_command("SELECT", str(db)))
        if given.get("client_name"):
            commands.append(pack_command("CLIENT", "SETNAME", str(given["client_name"])))
        host = str(given.get("host") or "127.0.0.1")
        return Target(
            host=host,
            port=int(given.get("port") or 6379),
            path=str(given.get("path") or ""),
            tls=tls,
            server_hostname=host if tls is not None else None,
            handshake=b"".join(commands),
            handshake_replies=len(commands),
            connect_timeout=connect_timeout,
        )

    def where(self) -> str:
        return self.path or f"{self.host}:{self.port}"


def _tls_context(given: dict[str, Any]) -> ssl.SSLContext:
    reqs = given.get("ssl_cert_reqs", "required")
    verify = _CERT_REQS[reqs.lower()] if isinstance(reqs, str) else reqs
    ctx = ssl.create_default_context()  # the system's CAs, and the given one with them (as redis-py)
    if given.get("ssl_ca_certs"):
        ctx.load_verify_locations(cafile=given["ssl_ca_certs"])
    check = given.get("ssl_check_hostname", True)
    ctx.check_hostname = bool(check) and str(check).lower() != "false" and verify != ssl.CERT_NONE
    ctx.verify_mode = verify
    if given.get("ssl_certfile"):
        ctx.load_cert_chain(given["ssl_certfile"], given.get("ssl_keyfile") or None, refuse_passphrase)
    return ctx


class _Request:
    __slots__ = ("counts", "done", "group", "on_group", "replies")

    def __init__(self, counts: Sequence[int], on_group: OnGroup | None, done: asyncio.Future[None]) -> None:
        self.counts = counts
        self.on_group = on_group
        self.done = done
        self.group = 0
        self.replies: list[Any] = []


class _Wire(asyncio.Protocol):
    """One socket's lifetime: replies matched in order to the requests that wait.

    What a tick's requests send goes out in one write at the end of the tick, not in a
    write each as they ask: in process (benchmarks/redis_protocol.py's store path, 16
    joins in flight, 3 rounds) 88.7-94.8 -> 78.1-79.7 µs a join at batch 100, 11.5-16.2
    -> 11.4-12.0 at batch 1, where one write per tick was already the rule (2026-12-05)."""

    def __init__(self) -> None:
        self.transport: Any = None  # (uvloop's transports are not asyncio.Transport subclasses)
        self.reader = hiredis.Reader(replyError=redis_errors.ResponseError)
        self.pending: collections.deque[_Request] = collections.deque()
        self.lost: BaseException | None = None
        self.outgoing: list[bytes] = []

    def send(self, packed: bytes) -> None:
        if not self.outgoing:
            asyncio.get_running_loop().call_soon(self.flush)
        self.outgoing.append(packed)

    def flush(self) -> None:
        if self.lost is None:
            self.transport.write(b"".join(self.outgoing))
        self.outgoing.clear()

    def add(self, req: _Request) -> None:
        """Wait for ``req``'s replies; on a socket already lost it fails at once (a server
        at maxclients, or a proxy with no backend, accepts and closes before a request
        that waited for the connect is queued: it would wait for replies that never come)."""
        if self.lost is not None:
            req.done.set_exception(self.error())
        else:
            self.pending.append(req)

    def error(self) -> redis_errors.ConnectionError:
        """Why the socket was lost, as the error its requests fail with."""
        lost = self.lost
        if isinstance(lost, redis_errors.ConnectionError):
            return lost
        return redis_errors.ConnectionError(f"redis connection lost: {lost!r}")

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        reader = self.reader
        reader.feed(data)
        pending = self.pending
        try:
            while (reply := reader.gets()) is not False:
                if not pending:  # nobody asked: Redis's last word before it closes, or garbage
                    self.transport.abort()
                    self.connection_lost(_unasked(reply))
                    return
                req = pending[0]
                req.replies.append(reply)
                if len(req.replies) == req.counts[req.group]:
                    replies, req.replies = req.replies, []
                    if req.on_group is not None:
                        req.on_group(req.group, replies)
                    req.group += 1
                    if req.group == len(req.counts):
                        pending.popleft()
                        if not req.done.done():
                            req.done.set_result(None)
        except hiredis.ProtocolError as e:  # not RESP
            self.transport.abort()
            self.connection_lost(redis_errors.ConnectionError(f"redis protocol out of step: {e!r}"))

    def connection_lost(self, exc: Exception | None) -> None:
        if self.lost is None:
            self.lost = exc or redis_errors.ConnectionError("Connection closed by server.")
        while self.pending:
            done = self.pending.popleft().done
            if not done.done():
                done.set_exception(self.error())


def _unasked(reply: Any) -> redis_errors.ConnectionError:
    """The loss a reply nobody asked for means: an error reply sent before closing (``ERR
    max number of clients reached``) in its own words, anything else as out of step."""
    if isinstance(reply, redis_errors.ResponseError):
        error = classify(reply)
        if isinstance(error, redis_errors.ConnectionError):
            return error
        return redis_errors.ConnectionError(f"redis closed the connection: {reply}")
    return redis_errors.ConnectionError(
        f"redis protocol out of step: a reply nobody asked for: {reply!r:.80}"
    )


class ReadConnection:
    """A connection that opens on first use and again after it was lost."""

    __slots__ = ("_connecting", "_connecting_drops", "_drops", "_opened", "_target", "_wire")

    def __init__(self, target: Target, opened: Callable[[], None] | None = None) -> None:
        self._target = target
        self._opened = opened  # called for every socket opened (a metric)
        self._wire: _Wire | None = None
        self._connecting: asyncio.Future[_Wire] | None = None
        self._connecting_drops = 0  # the drops the connect under way started after
        self._drops = 0  # disconnect() calls: a socket opened across one is closed at once

    @property
    def connected(self) -> bool:
        wire = self._wire
        return wire is not None and wire.lost is None

    async def request(self, packed: bytes, counts: Sequence[int], on_group: OnGroup | None = None) -> None:
        """Send ``packed`` (as many commands as ``counts`` sums to) and wait for every
        reply; ``on_group(i, replies)`` gets the ``counts[i]`` replies of group ``i`` as
        soon as they are whole. Error replies are in the replies (``ResponseError``)."""
        wire = self._wire
        if wire is None or wire.lost is not None:
            wire = await self._connect()
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        wire.add(_Request(counts, on_group, done))
        wire.send(packed)
        await done

    def submit(self, packed: bytes, counts: Sequence[int], on_group: OnGroup) -> asyncio.Future[None]:
        """``request`` without the wait, on a connection that is ``connected``, written
        now: the future is done when every reply came (or fails when the socket goes)."""
        wire = self._wire
        if wire is None or wire.lost is not None:
            raise redis_errors.ConnectionError("the connection is not open")
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        wire.pending.append(_Request(counts, on_group, done))
        if wire.outgoing:  # a write is queued for the tick's end: this goes with it
            wire.outgoing.append(packed)
        else:
            wire.transport.write(packed)
        return done

    async def _connect(self) -> _Wire:
        # One connect for every request that finds the socket closed at the same time; a
        # caller given up on (its deadline) does not end it for the others. A connect that
        # a disconnect() overtook is bound to fail: the next request starts its own.
        connecting = self._connecting
        if connecting is None or connecting.done() or self._connecting_drops != self._drops:
            self._connecting_drops = self._drops
            connecting = self._connecting = asyncio.ensure_future(self._open(self._drops))
            connecting.add_done_callback(_retrieved)
        return await asyncio.shield(connecting)

    async def _open(self, drops: int) -> _Wire:
        """A socket, set up; ``drops``: ``disconnect()`` calls before it was asked for."""
        t = self._target
        loop = asyncio.get_running_loop()
        wire = _Wire()
        try:
            async with asyncio.timeout(t.connect_timeout):
                if t.path:
                    await loop.create_unix_connection(lambda: wire, t.path)
                else:
                    await loop.create_connection(
                        lambda: wire, t.host, t.port, ssl=t.tls, server_hostname=t.server_hostname
                    )
                    sock = wire.transport.get_extra_info("socket")
                    if sock is not None:
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
                if self._opened is not None:
                    self._opened()
                if t.handshake_replies:
                    await self._handshake(wire)
            if drops != self._drops:
                raise redis_errors.ConnectionError("the connection was closed while it opened")
        except TimeoutError:
            _abort(wire)
            raise redis_errors.TimeoutError(f"Timeout connecting to {t.where()}") from None
        except redis_errors.RedisError:
            _abort(wire)
            raise
        except (OSError, ssl.SSLError) as e:
            _abort(wire)
            raise redis_errors.ConnectionError(f"Error connecting to {t.where()}: {e}") from e
        except BaseException:
            _abort(wire)
            raise
        self._wire = wire
        return wire

    async def _handshake(self, wire: _Wire) -> None:
        t = self._target
        answers: list[Any] = []
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        wire.add(_Request((t.handshake_replies,), lambda _, replies: answers.extend(replies), done))
        wire.transport.write(t.handshake)
        await done
        for answer in answers:
            if isinstance(answer, redis_errors.ResponseError):
                error = classify(answer)
                if isinstance(error, redis_errors.AuthenticationError) or "AUTH" in str(answer).upper():
                    raise redis_errors.AuthenticationError(str(answer))
                raise redis_errors.ConnectionError(f"redis refused the connection: {answer}")

    def give_up(self) -> None:
        """A request given up on (its deadline): drop the socket if anything was sent on it
        (a reply must never reach the next request); a connect under way goes on for the
        next user, so a slow connect is not started again by every read that gives up on
        it (review round 13: 200 sockets against 2 for a pool of 2 whose AUTH took 80 ms)."""
        wire = self._wire
        if wire is not None and wire.pending:
            self.disconnect()

    def disconnect(self) -> None:
        """Close the socket now (without waiting for the peer); requests waiting on it
        fail with a ``ConnectionError`` (as does one opening it now); the next request
        opens a new one."""
        self._drops += 1
        wire, self._wire = self._wire, None
        if wire is not None:
            _abort(wire)


def _retrieved(fut: asyncio.Future[_Wire]) -> None:
    """A failed connect whose callers all gave up is not logged as never retrieved."""
    if not fut.cancelled():
        fut.exception()


def _abort(wire: _Wire) -> None:
    if wire.transport is not None:
        wire.transport.abort()
    wire.connection_lost(redis_errors.ConnectionError("the connection was closed"))
