"""The threads a ClickHouse store's calls run on.

clickhouse-connect's client is synchronous, so every call runs in a bounded thread
pool with one client per thread: the event loop never blocks, and a saturated pool
fails new calls at once (the store serves the view UNAVAILABLE) instead of queueing
them past their deadline. Every call is bounded by ``timeout_ms`` (the HTTP timeouts
of the clients made here, and ``max_execution_time`` on reads), so a read abandoned at
its deadline frees its thread soon after. The health probe and table upkeep run on an
admin thread with a client of its own, so they are never stuck behind user reads.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

import clickhouse_connect

from featurestore.errors import Unavailable
from featurestore.sources.clickhouse.options import ClickHouseOptions

log = logging.getLogger(__name__)
T = TypeVar("T")


class ClickHousePool:
    """User calls on ``options.threads`` threads with ``options.max_queued`` waiting
    places; admin calls on one thread of their own."""

    def __init__(self, store: str, options: ClickHouseOptions) -> None:
        self._store = store
        self._options = options
        self._limit = options.threads + options.max_queued
        self._pool = ThreadPoolExecutor(max_workers=options.threads, thread_name_prefix=f"clickhouse-{store}")
        # The health probe and table upkeep get a thread (hence a client) of their own:
        # behind busy user reads a probe would report a hung store late, and upkeep
        # would take slots from reads.
        self._admin_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"clickhouse-{store}-admin")
        self._local = threading.local()
        self._clients: list[Any] = []
        self._clients_lock = threading.Lock()
        # Taken on the loop, given back by the pool future's done-callback: once when a
        # call ends, or when it is cancelled while still queued (then it never runs).
        # A read abandoned at its deadline while running holds its slot until it ends.
        self._in_flight = 0
        self._in_flight_lock = threading.Lock()

    @property
    def in_flight(self) -> int:
        """User calls holding a slot: running on a thread or queued for one."""
        return self._in_flight

    async def run(self, fn: Callable[[Any], T]) -> T:
        """Run ``fn(client)`` on a pool thread; fail at once when the pool is saturated."""
        with self._in_flight_lock:
            if self._in_flight >= self._limit:
                raise Unavailable(
                    f"clickhouse store {self._store!r}: all {self._options.threads} threads busy"
                )
            self._in_flight += 1
        try:
            future = self._pool.submit(lambda: fn(self._client()))
        except RuntimeError as e:  # the pool is shut down: the call never ran
            with self._in_flight_lock:
                self._in_flight -= 1
            raise Unavailable(f"clickhouse store {self._store!r} is closed") from e
        # Registered before wrap_future: the slot is free by the time the awaiter resumes.
        future.add_done_callback(self._release)
        # Cancelling the awaiter cancels the pool future when it has not started yet.
        return await asyncio.wrap_future(future)

    async def admin(self, fn: Callable[[Any], T]) -> T:
        """Run ``fn(client)`` on the admin thread, waiting at most ``timeout_ms``."""
        try:
            future = self._admin_pool.submit(lambda: fn(self._client()))
        except RuntimeError as e:  # shut down
            raise Unavailable(f"clickhouse store {self._store!r} is closed") from e
        timeout_ms = self._options.timeout_ms
        try:
            async with asyncio.timeout(timeout_ms / 1000):
                return await asyncio.wrap_future(future)
        except TimeoutError:
            raise TimeoutError(f"no answer from ClickHouse within {timeout_ms} ms") from None

    def close(self) -> None:
        """Blocking: wait for running calls, cancel queued ones, close every client."""
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._admin_pool.shutdown(wait=True, cancel_futures=True)
        for c in self._clients:
            try:
                c.close()
            except Exception:
                log.debug("closing a clickhouse client failed", exc_info=True)

    def _client(self) -> Any:
        client = getattr(self._local, "client", None)
        if client is None:
            if self._options.embedded:
                client = clickhouse_connect.get_client(**self._options.client_args())
            else:
                # The defaults (10 s connect, 300 s receive) would let a hung server keep
                # a thread for minutes after the read was abandoned. clickhouse-connect
                # takes whole seconds; the chdb client has no use for either.
                # No session: nothing here needs one, and a read abandoned at its timeout
                # while the server still runs it would lock the thread's session for the
                # next query (SESSION_IS_LOCKED).
                seconds = max(1, math.ceil(self._options.timeout_ms / 1000))
                client = clickhouse_connect.get_client(
                    **self._options.client_args(),
                    connect_timeout=seconds,
                    send_receive_timeout=seconds,
                    autogenerate_session_id=False,
                )
            self._local.client = client
            with self._clients_lock:
                self._clients.append(client)
        return client

    def _release(self, _: Future[Any]) -> None:
        with self._in_flight_lock:
            self._in_flight -= 1
