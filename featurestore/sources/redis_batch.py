"""Auto-pipelining (store option ``auto_pipeline``): the MGETs of every join that reads
in the same event-loop tick go to Redis as one write on one connection, and their
replies are read back in order, instead of one write and one connection per join.

Fewer syscalls on both sides (one send and a few receives per tick instead of per
join) against a future per join and a task per tick; only reads of up to ``MAX_KEYS``
keys are coalesced. Measured A/B in benchmarks/RESULTS.md ("Requirement 3 experiments").

A tick's send runs in its own task, not in any join's, so a join's deadline does not
end it: once every join of the tick has given up (a frozen Redis), the send is
cancelled and its connection disconnected and handed back, as a join's own read would
be. A send some join still waits for runs on.
"""

from __future__ import annotations

import asyncio
from typing import Any, Final

from featurestore.sources.redis_pool import LeanPool
from featurestore.sources.redis_wire import pack_mget

# Reads of more keys than this go out on their own connection at once: measured (two A/B
# runs, benchmarks/RESULTS.md) coalescing won 17-19% CPU per join at batch 1 and 10 (3 and
# 21 keys a join) and lost 15% QPS at batch 100 (201 keys), where a tick's one write is
# long and every join of the tick waits for the whole reply.
MAX_KEYS: Final = 64


class _Batch:
    __slots__ = ("futures", "keys", "packed", "send")

    def __init__(self) -> None:
        self.packed: list[bytes] = []
        self.keys: list[list[list[str]]] = []  # per join: its MGETs (each a key list)
        self.futures: list[asyncio.Future[list[Any]]] = []
        self.send: asyncio.Task[None] | None = None  # the tick's send, once flushed

    def abandoned(self) -> bool:
        """No join waits for this batch any more (each has its replies or gave up)."""
        return all(f.done() for f in self.futures)


class AutoPipeline:
    """Collects the MGETs of one tick and sends them together; one per store."""

    def __init__(self, pool: LeanPool) -> None:
        self._pool = pool
        self._batch: _Batch | None = None
        self._flushes: set[asyncio.Task[None]] = set()

    async def mget(self, commands: list[list[str]]) -> list[Any]:
        """The replies of ``commands`` (MGET key lists), in order."""
        loop = asyncio.get_running_loop()
        batch = self._batch
        if batch is None:
            batch = self._batch = _Batch()
            loop.call_soon(self._flush)
        fut: asyncio.Future[list[Any]] = loop.create_future()
        batch.packed.append(b"".join(map(pack_mget, commands)))
        batch.keys.append(commands)
        batch.futures.append(fut)
        try:
            return await fut
        except asyncio.CancelledError:  # this join gave up (its deadline): the last one out
            if batch.send is not None and batch.abandoned():  # ends the send it no longer needs
                batch.send.cancel()
            raise

    def _flush(self) -> None:
        batch, self._batch = self._batch, None
        if batch is None:
            return
        task = batch.send = asyncio.get_running_loop().create_task(self._send(batch))
        self._flushes.add(task)
        task.add_done_callback(self._flushes.discard)

    async def _send(self, batch: _Batch) -> None:
        if batch.abandoned():  # every join of the tick gave up before it was flushed
            return
        try:
            conn = await self._pool.acquire()
        except BaseException as e:
            _fail(batch, e)
            raise
        try:
            await conn.send_packed_command(b"".join(batch.packed), check_health=False)
            for commands, fut in zip(batch.keys, batch.futures, strict=True):
                replies = [await conn.read_response() for _ in commands]
                if not fut.done():  # a join that gave up (its deadline) is read and dropped
                    fut.set_result(replies)
        except BaseException as e:
            # A half-read reply would desync the next user of this connection.
            await conn.disconnect(nowait=True)
            _fail(batch, e)
            if not isinstance(e, Exception):
                raise
        finally:
            self._pool.release(conn)

    async def close(self) -> None:
        for task in list(self._flushes):
            task.cancel()


def _fail(batch: _Batch, error: BaseException) -> None:
    for fut in batch.futures:
        if not fut.done():
            fut.set_exception(error if isinstance(error, Exception) else ConnectionError(repr(error)))
