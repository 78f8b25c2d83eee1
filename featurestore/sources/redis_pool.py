"""A lean, bounded pool of redis-py asyncio connections for the read path.

redis-py's ``BlockingConnectionPool`` takes a lock, opens a timeout scope and records
observability counters on every checkout; on a batch-1 join that was about a seventh
of the server's CPU. Here a checkout is a ``deque.pop``, and a waiter only appears
when all ``size`` connections are busy. Connections are redis-py's own (its socket
handling and hiredis parser); a broken one is disconnected and reconnects lazily on
its next use.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque

from redis import exceptions as redis_errors
from redis.asyncio.connection import AbstractConnection, ConnectionPool

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
    def __init__(self, url: str, size: int, **connection_kwargs: object) -> None:
        if size <= 0:
            raise ValueError("pool size must be positive")
        # Used only as a factory: it parses the URL into the right connection class
        # (TCP, TLS or unix socket) and its keyword arguments.
        self._factory = ConnectionPool.from_url(url, **connection_kwargs)
        self.size = size
        self._idle: deque[AbstractConnection] = deque()
        self._all: list[AbstractConnection] = []
        self._waiters: deque[asyncio.Future[AbstractConnection]] = deque()
        self._closed = False
        self._refresh: asyncio.Future[None] | None = None

    async def acquire(self) -> AbstractConnection:
        if self._closed:
            raise ConnectionError("the connection pool is closed")
        if self._idle:
            return self._idle.pop()
        if len(self._all) < self.size:
            conn: AbstractConnection = self._factory.make_connection()  # type: ignore[no-untyped-call]
            self._all.append(conn)
            return conn  # connects on first send
        fut: asyncio.Future[AbstractConnection] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            return await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self.release(fut.result())  # handed over just as we gave up: pass it on
            raise

    @property
    def busy(self) -> int:
        """Connections checked out now."""
        return len(self._all) - len(self._idle)

    def release(self, conn: AbstractConnection) -> None:
        if self._closed:  # close() disconnected it
            return
        while self._waiters:
            fut = self._waiters.popleft()
            if not fut.done():
                fut.set_result(conn)
                return
        self._idle.append(conn)

    async def reset(self) -> None:
        """Drop every idle socket (after an outage, or one found closed by the server):
        they reconnect on next use. Each is taken out of the idle set and put back once
        closed, so no read gets it half-closed; the close does not wait for the peer (a
        TLS close would wait a round trip per socket, reads waiting on the reset with
        it) and its errors are the dead socket's, not the caller's."""
        stale = list(self._idle)
        self._idle.clear()
        try:
            while stale:
                conn = stale.pop()
                try:
                    with contextlib.suppress(Exception):
                        await conn.disconnect(nowait=True)
                finally:
                    self.release(conn)
        finally:  # cancelled half way: the ones not reached go back all the same
            for conn in stale:
                self.release(conn)

    async def refresh(self) -> None:
        """``reset``, once for every caller that asks while one runs (reads retrying after
        a stale socket: each would otherwise drop the sockets the others just opened); a
        caller given up on (its deadline) does not end it for the others."""
        if self._refresh is None or self._refresh.done():
            self._refresh = asyncio.ensure_future(self.reset())
        await asyncio.shield(self._refresh)

    async def close(self) -> None:
        self._closed = True
        for fut in self._waiters:
            if not fut.done():
                fut.set_exception(ConnectionError("the connection pool is closed"))
        for conn in self._all:
            await conn.disconnect()
        self._idle.clear()
        self._all.clear()
        await self._factory.disconnect()
