"""Auto-pipelining (store option ``auto_pipeline``, on by default): the MGETs of every
join that reads in the same event-loop tick go to Redis as one write on one connection,
and their replies are read back in order, instead of one write and one connection per
join.

Fewer syscalls on both sides (one send and a few receives per tick instead of per
join) against a future per join and a task per tick; only reads of up to ``MAX_KEYS``
keys are coalesced, and a write carries at most ``MAX_WRITE_KEYS``. Measured A/B in
benchmarks/RESULTS.md ("Requirement 3 experiments").

A tick's send is no join's, so a join's deadline does not end it: once every join of
the tick has given up (a frozen Redis), its connection is disconnected and handed back,
as a join's own read would be. A send some join still waits for runs on. An error reply
(a denied key, say) fails only the join whose MGET it answers: the reply is read whole,
so the connection stays in step for the joins after it.

A send is written from the tick-end callback itself when the pool has an open
connection idle (the rule under load), and its connection handed back from the reply's
callback: no task. Otherwise (the first reads, after a reconnect, all connections busy)
it runs in a task of its own that waits for a connection. In process (the store path of
benchmarks/redis_protocol.py at batch 1, six interleaved rounds, 2026-12-05) the task
cost 13.6 µs a join with one join in flight (gRPC's case: 76.9 against 63.3), 2.4 with
four, 0.6 with sixteen.

A write begun by a lone call's read (``lone_calls.LONE_CALLS``: gRPC, whose calls reach
the loop one per wakeup) while at least ``COMPANY`` other such calls are in flight waits
up to ``hold`` loop iterations (store option ``hold_iterations``) and about
``HOLD_MAX_SECONDS``: the reads of the calls the loop takes meanwhile join it. It goes
early when it fills up, when every join in it gave up, or at the end of the tick in
which a read of another kind of call (HTTP, never held) joins it. Measured at
``HOLD_ITERATIONS``.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Final, Protocol

from redis.exceptions import ResponseError

from featurestore.lone_calls import LONE_CALLS
from featurestore.sources.redis_connection import ReadConnection, classify
from featurestore.sources.redis_pool import LeanPool
from featurestore.sources.redis_wire import pack_mget

# Reads of more keys than this go out on their own connection at once: measured (four A/B
# runs at concurrency 32, benchmarks/RESULTS.md) coalescing saved 6-32% CPU per join at
# batch 1 and 10 (3 and 22 keys a join) and lost 15% QPS at batch 100 (202 keys), where a
# tick's one write is long and every join of the tick waits for the whole reply.
MAX_KEYS: Final = 64
# A tick's joins are split over writes of at most this many keys: coalescing won with
# ~350 keys a write (16 joins of 22 keys: batch 10, concurrency 32 over 2 workers) and
# lost with ~3,400 (batch 100), so a tick of many medium joins does not become one long
# write every join of it waits for.
MAX_WRITE_KEYS: Final = 512
# How long a write of lone calls' reads waits for company: at most this many loop
# iterations (each may hand the loop another call) and about this long (the clock is read
# once an iteration). Which cap ends a wait depends on the load: with a 2 ms cap at
# concurrency 32, 77-85% of the waits ran 40 or more of their 48 iterations (a probe in
# two workers, 2026-12-06), so an iteration under load mostly took less than ~40-50 µs
# there; idle, the iteration cap ends it (48 iterations: 23 µs, median, on an otherwise
# idle uvloop loop). 48 was not tuned against other counts in this design. 1 ms against
# 2 ms: two runs each read about the same CPU at concurrency 32 and could not tell their
# p50 apart at 8 (+0.26 to +0.49 ms against +0.01 to +0.27); the shorter wait was kept.
# A/B runs and the variants tried: benchmarks/RESULTS.md, "Requirement 3 experiments", and
# benchmarks/results/grpc-hold-experiments.md.
HOLD_ITERATIONS: Final = 48
HOLD_MAX_SECONDS: Final = 0.001
# How many other lone calls must be in flight (the in-flight count includes the caller)
# for a write to wait. 1 against 2, each A/B'd against hold_iterations=0 (2 ms cap, 4
# interleaved rounds, benchmarks/results/grpc-hold-experiments.md): concurrency 32, CPU
# per call -10% / -10% at batch 1 / 10 with 1 (a second run: -7.5% / -7%), -6% / -1% with
# 2; concurrency 8, +5% / -4% with 1, +3% / +5% with 2: within this VM's run-to-run
# spread (~5-10%) at 8.
COMPANY: Final = 1


class Counter(Protocol):
    def inc(self, amount: float = 1) -> None: ...


# per held (True: the write began waiting for lone calls): its (writes, reads) counters
Counters = dict[bool, tuple[Counter, Counter]]


class _Batch:
    __slots__ = ("conn", "futures", "held", "hurried", "packed", "replies", "send", "settled", "size")

    def __init__(self) -> None:
        self.packed: list[bytes] = []
        self.replies: list[int] = []  # per join: how many MGETs it sent (a reply each)
        self.futures: list[asyncio.Future[list[Any]]] = []
        self.send: asyncio.Task[None] | None = None  # the batch's send task, if it needed one
        self.conn: ReadConnection | None = None  # the connection written to without a task
        self.settled = 0  # joins answered or given up
        self.size = 0  # keys
        self.held = False  # began waiting for lone calls' reads (it may have gone early)
        self.hurried = False  # a read of another kind of call joined it: out at that tick's end

    @property
    def out(self) -> bool:
        return self.send is not None or self.conn is not None

    def abandon(self) -> None:
        """Every join gave up: end the send (its connection is dropped and handed back)."""
        if self.send is not None:
            self.send.cancel()
        elif self.conn is not None:
            self.conn.disconnect()  # its reply's future fails: _sent hands it back

    def settle(self) -> bool:
        """Count one join as done with the batch; True when none waits for it any more."""
        self.settled += 1
        return self.settled == len(self.futures)

    def answer(self, join: int, replies: list[Any]) -> None:
        """Join ``join``'s replies are in: its MGETs' values, or its first error reply
        (an error fails only the join whose MGET it answers)."""
        fut = self.futures[join]
        if fut.done():  # a join that gave up (its deadline): read and dropped
            return
        self.settle()
        for reply in replies:
            if isinstance(reply, ResponseError):
                fut.set_exception(classify(reply))
                return
        fut.set_result(replies)


class AutoPipeline:
    """Collects the MGETs of one tick and sends them together; one per store."""

    def __init__(self, pool: LeanPool, hold: int = 0, counters: Counters | None = None) -> None:
        """``hold``: loop iterations a write of lone calls' reads may wait for more (0:
        never); ``counters[held]``: the (writes, reads) counters of writes that waited
        (True) or not (None: not counted)."""
        self._pool = pool
        self._hold = hold
        self._counters = counters or _NOT_COUNTED
        self._batch: _Batch | None = None
        self._flushes: set[asyncio.Task[None]] = set()
        self._written: dict[_Batch, asyncio.Future[None]] = {}  # sends without a task, in flight
        self._closed = False

    async def mget(self, commands: list[list[str]]) -> list[Any]:
        """The replies of ``commands`` (MGET key lists), in order: ``mget_packed`` for
        callers holding keys, not packed MGETs."""
        return await self.mget_packed(
            b"".join(map(pack_mget, commands)), len(commands), sum(map(len, commands))
        )

    async def mget_packed(self, packed: bytes, commands: int, keys: int) -> list[Any]:
        """The replies of ``commands`` MGETs packed in ``packed``, in order; ``keys``: how
        many keys they read."""
        batch, fut = self.enqueue(packed, commands, keys)
        try:
            return await fut
        except asyncio.CancelledError:  # this join gave up (its deadline)
            self.gave_up(batch, fut)
            raise

    def enqueue(self, packed: bytes, commands: int, keys: int) -> tuple[_Batch, asyncio.Future[list[Any]]]:
        """``mget_packed`` without the wait: the future of the replies (of any commands
        with one reply each), and its batch, for ``gave_up`` when the caller gives up on
        it (a Cluster read waits for several nodes' at once, with no task each)."""
        if self._closed:
            raise ConnectionError("the store is closed")
        loop = asyncio.get_running_loop()
        batch = self._batch
        if batch is not None and batch.size + keys > MAX_WRITE_KEYS:
            self._flush(batch)  # full: out now, this join starts the tick's next write
            batch = None
        calls = LONE_CALLS.get() if self._hold else None  # (no write waits without a hold)
        if batch is None:
            batch = self._batch = _Batch()
            if self._hold and calls is not None and calls.value > COMPANY:
                batch.held = True
                loop.call_soon(self._wait, batch, loop, self._hold, time.perf_counter() + HOLD_MAX_SECONDS)
            else:
                loop.call_soon(self._flush, batch)
        elif calls is None and batch.held and not batch.hurried:
            # a read of a call that came with others (HTTP) never waits: out at this tick's end
            batch.hurried = True
            loop.call_soon(self._flush, batch)
        fut: asyncio.Future[list[Any]] = loop.create_future()
        batch.packed.append(packed)
        batch.replies.append(commands)
        batch.futures.append(fut)
        batch.size += keys
        return batch, fut

    @staticmethod
    def gave_up(batch: _Batch, fut: asyncio.Future[list[Any]]) -> None:
        """A join gave up on ``fut`` (cancelled, or to be cancelled here): the last one of
        its batch to do so ends the send nobody waits for."""
        fut.cancel()
        if fut.cancelled() and batch.settle():
            batch.abandon()

    def _wait(self, batch: _Batch, loop: asyncio.AbstractEventLoop, left: int, until: float) -> None:
        """One loop iteration of a write waiting for lone calls' reads (mget says when).

        The wait is not cut short when every call the in-flight count sees is already in
        the write: grpc.aio queues calls in its core before their handlers start, where no
        count sees them, and those are the company a wait is for. A wait ended by that
        count (64 iterations, 2 ms cap; "Requirement 3 experiments") carried 1.04-1.05
        reads a write, against 3.4-4.6 for a fixed wait of 32 iterations and 2.4-2.5 for
        this one at concurrency 32 (its counters, same section)."""
        if left > 1 and not batch.out and batch.settled < len(batch.futures) and time.perf_counter() < until:
            loop.call_soon(self._wait, batch, loop, left - 1, until)
        else:
            self._flush(batch)

    def _flush(self, batch: _Batch) -> None:
        if batch.out or self._closed:  # already out (it filled up), or failed by close
            return
        if self._batch is batch:
            self._batch = None
        if batch.settled == len(batch.futures):  # every join gave up before the tick's end
            return
        conn = self._pool.take()
        if conn is not None:
            self._count(batch)
            batch.conn = conn
            done = self._written[batch] = conn.submit(b"".join(batch.packed), batch.replies, batch.answer)
            done.add_done_callback(lambda done: self._sent(batch, done))
            return
        task = batch.send = asyncio.get_running_loop().create_task(self._send(batch))
        self._flushes.add(task)
        task.add_done_callback(self._flushes.discard)
        # However the send ended (cancelled before its first step by close(), or on an
        # await of its error path), no join of it is left waiting.
        task.add_done_callback(
            lambda _: _fail(batch, ConnectionError("the read's send ended before its reply"))
        )

    async def _send(self, batch: _Batch) -> None:
        try:
            conn = await self._pool.acquire()
        except BaseException as e:
            _fail(batch, e)  # the joins get the error; the task ends quietly on an Exception
            if not isinstance(e, Exception):  # (re-raised, nobody would retrieve it: logged per tick)
                raise
            return
        self._count(batch)
        try:
            await conn.request(b"".join(batch.packed), batch.replies, batch.answer)
        except BaseException as e:
            # Given up before every reply came: the next user of this connection must not get them.
            conn.give_up()
            _fail(batch, e)
            if not isinstance(e, Exception):
                raise
        finally:
            self._pool.release(conn)

    def _count(self, batch: _Batch) -> None:
        """A write is handed to a connection: count it and the joins' reads it carries."""
        writes, reads = self._counters[batch.held]
        writes.inc()
        reads.inc(len(batch.futures))

    def _sent(self, batch: _Batch, done: asyncio.Future[None]) -> None:
        """A send without a task is over: every reply came, or its socket went."""
        error = ConnectionError("the read's send was cancelled") if done.cancelled() else done.exception()
        if self._written.pop(batch, None) is None:  # close() got there first
            return
        if batch.conn is not None:
            if error is not None:  # its socket went: the joins get why
                batch.conn.disconnect()
                _fail(batch, error)
            self._pool.release(batch.conn)

    async def close(self) -> None:
        """Fail what is not sent yet and end the sends in flight (their joins fail)."""
        self._closed = True
        if self._batch is not None:
            batch, self._batch = self._batch, None
            _fail(batch, ConnectionError("the store is closed"))
        written, self._written = self._written, {}
        for batch in written:
            if batch.conn is not None:
                batch.conn.disconnect()
                _fail(batch, ConnectionError("the store is closed"))
                self._pool.release(batch.conn)
        if written:
            await asyncio.sleep(0)  # the joins failed above take that step before close() returns
        sends = list(self._flushes)
        for task in sends:
            task.cancel()
        await asyncio.gather(*sends, return_exceptions=True)


class _Uncounted:
    def inc(self, amount: float = 1) -> None:
        pass


_NOTHING: Final = _Uncounted()
_NOT_COUNTED: Final[Counters] = {False: (_NOTHING, _NOTHING), True: (_NOTHING, _NOTHING)}


def _fail(batch: _Batch, error: BaseException) -> None:
    for fut in batch.futures:
        if not fut.done():
            fut.set_exception(error if isinstance(error, Exception) else ConnectionError(repr(error)))
