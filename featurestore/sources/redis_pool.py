"""A lean, bounded pool of the read path's connections (``redis_connection.py``).

redis-py's ``BlockingConnectionPool`` takes a lock, opens a timeout scope and records
observability counters on every checkout; on a batch-1 join that was about a seventh
of the server's CPU. Here a checkout is a ``deque.pop``, and a waiter only appears
when all ``size`` connections are busy. A broken connection is disconnected and opens
again on its next use.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable

from redis import exceptions as redis_errors

from featurestore.sources.redis_connection import ReadConnection, Target

CONNECTION_ERRORS = (redis_errors.ConnectionError, redis_errors.TimeoutError, OSError)
# Connection errors a fresh socket would not mend, so a read is not tried again after
# them: a timeout (a retry would double the wait), Redis refusing the client, or loading
# its data. After the others, a socket Redis (its `timeout`) or a proxy closed while it
# idled in the pool, a read is tried once more on fresh sockets (``LeanPool.reset``).
NOT_RETRIED = (
    redis_errors.TimeoutError,
    TimeoutError,
    redis_errors.AuthenticationError,
    redis_errors.AuthorizationError,
    redis_errors.BusyLoadingError,
)


class LeanPool:
    def __init__(
        self,
        url: str | Target,
        size: int,
        socket_connect_timeout: float | None = None,
        opened: Callable[[], None] | None = None,
        **options: object,
    ) -> None:
        """``url``: a store URL, or a ``Target`` already made of one (a Cluster node's:
        its timeout and options are in it, and giving them again is a TypeError);
        ``socket_connect_timeout``: seconds, 0.25 by default; ``options``: the store's
        connection options (``RedisOptions.connection_kwargs``); ``opened``: called for
        every socket the pool's connections open (a metric)."""
        if size <= 0:
            raise ValueError("pool size must be positive")
        if isinstance(url, Target):
            if options or socket_connect_timeout is not None:
                raise TypeError("a Target carries its own timeout and options: give them to Target.from_url")
            self._target = url
        else:
            timeout = 0.25 if socket_connect_timeout is None else socket_connect_timeout
            self._target = Target.from_url(url, timeout, **options)
        self._opened = opened
        self.size = size
        self._idle: deque[ReadConnection] = deque()
        self._all: list[ReadConnection] = []
        self._waiters: deque[asyncio.Future[ReadConnection]] = deque()
        self._closed = False

    async def acquire(self) -> ReadConnection:
        if self._closed:
            raise ConnectionError("the connection pool is closed")
        if self._idle:
            return self._idle.pop()
        if len(self._all) < self.size:
            conn = ReadConnection(self._target, self._opened)
            self._all.append(conn)
            return conn  # connects on first request
        fut: asyncio.Future[ReadConnection] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            return await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release(fut.result())  # handed over just as we gave up: pass it on
            raise

    def take(self) -> ReadConnection | None:
        """An idle connection that is open, at once, or None (then ``acquire``)."""
        if self._idle and self._idle[-1].connected and not self._closed:
            return self._idle.pop()
        return None

    @property
    def busy(self) -> int:
        """Connections checked out now."""
        return len(self._all) - len(self._idle)

    def release(self, conn: ReadConnection) -> None:
        if self._closed:  # close() disconnected it
            return
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(conn)
                return
        self._idle.append(conn)

    def reset(self) -> None:
        """Drop every idle socket (after an outage, or one found closed by the server):
        they reconnect on next use. Over at once: the close does not wait for the peer (a
        TLS close would wait a round trip per socket), so reads retrying together need no
        shared reset (a socket another one just opened is checked out, not idle)."""
        for conn in list(self._idle):
            conn.disconnect()

    async def close(self) -> None:
        self._closed = True
        for fut in self._waiters:
            if not fut.done():
                fut.set_exception(ConnectionError("the connection pool is closed"))
        for conn in self._all:
            conn.disconnect()
        self._idle.clear()
        self._all.clear()
