"""The bookkeeping of auto-pipelining (sources/redis_batch.py) over a scripted connection:
which sends end when joins give up, and how a tick's keys are split over writes. The
same paths against a real redis-server: tests/integration/test_redis_auto_pipeline.py."""

from __future__ import annotations

import asyncio
from typing import Any

from featurestore.sources.redis_batch import MAX_WRITE_KEYS, AutoPipeline


class ScriptedConnection:
    """Answers each MGET with what the test puts in ``replies``, when it does."""

    def __init__(self) -> None:
        self.replies: asyncio.Queue[Any] = asyncio.Queue()
        self.writes: list[bytes] = []
        self.dropped = False

    async def request(self, packed: bytes, counts: list[int], on_group: Any) -> None:
        self.writes.append(packed)
        for i, count in enumerate(counts):
            on_group(i, [await self.replies.get() for _ in range(count)])

    def disconnect(self) -> None:
        self.dropped = True

    def give_up(self) -> None:  # a request is always out here: as ReadConnection, dropped
        self.dropped = True


class OneConnectionPool:
    def __init__(self) -> None:
        self.conn = ScriptedConnection()
        self.busy = 0

    def take(self) -> None:  # no connection open at once: every send in a task of its own
        return None

    async def acquire(self) -> ScriptedConnection:
        self.busy += 1
        return self.conn

    def release(self, conn: ScriptedConnection) -> None:
        self.busy -= 1


def keys_per_write(writes: list[bytes]) -> list[int]:
    # RESP: each MGET is an array (*) of bulk strings ($): its name, then its keys
    return [w.count(b"$") - w.count(b"*") for w in writes]


async def test_a_join_cancelled_after_its_reply_came_does_not_end_the_send_another_join_waits_for() -> None:
    pool = OneConnectionPool()
    auto = AutoPipeline(pool)  # type: ignore[arg-type]
    first = asyncio.ensure_future(auto.mget([["a"]]))
    second = asyncio.ensure_future(auto.mget([["b"]]))  # the same tick: one send
    await asyncio.sleep(0.01)
    pool.conn.replies.put_nowait([b"1"])
    await asyncio.sleep(0)  # the send hands the first join its reply...
    first.cancel()  # ...and the join is cancelled before it wakes
    pool.conn.replies.put_nowait([b"2"])
    assert await asyncio.wait_for(second, 1) == [[b"2"]]
    assert not pool.conn.dropped and pool.busy == 0


async def test_when_the_last_waiting_join_gives_up_after_another_was_answered_the_send_ends() -> None:
    pool = OneConnectionPool()
    auto = AutoPipeline(pool)  # type: ignore[arg-type]
    first = asyncio.ensure_future(auto.mget([["a"]]))
    second = asyncio.ensure_future(auto.mget([["b"]]))
    await asyncio.sleep(0.01)
    pool.conn.replies.put_nowait([b"1"])
    assert await asyncio.wait_for(first, 1) == [[b"1"]]
    second.cancel()  # its reply never comes: nobody waits for the send any more
    await asyncio.sleep(0.01)
    assert pool.conn.dropped and pool.busy == 0  # the connection is dropped and handed back


async def test_a_join_that_gave_up_before_its_reply_came_is_counted_once() -> None:
    # Counted when it gave up, not again when its reply comes: counted twice, the second
    # join's giving up would look like the last one and end the send the third waits for.
    pool = OneConnectionPool()
    auto = AutoPipeline(pool)  # type: ignore[arg-type]
    first, second, third = (asyncio.ensure_future(auto.mget([[k]])) for k in "abc")
    await asyncio.sleep(0.01)
    first.cancel()
    await asyncio.sleep(0)
    pool.conn.replies.put_nowait([b"1"])  # the first join's reply, read and dropped
    await asyncio.sleep(0.01)
    second.cancel()
    await asyncio.sleep(0.01)
    assert not pool.conn.dropped  # the third join still waits for this send
    pool.conn.replies.put_nowait([b"2"])
    pool.conn.replies.put_nowait([b"3"])
    assert await asyncio.wait_for(third, 1) == [[b"3"]]
    assert not pool.conn.dropped and pool.busy == 0


async def test_a_send_cancelled_before_its_first_step_leaves_no_join_waiting() -> None:
    pool = OneConnectionPool()
    auto = AutoPipeline(pool)  # type: ignore[arg-type]
    joins = [asyncio.ensure_future(auto.mget([[f"k{i}:{j}" for j in range(64)]])) for i in range(9)]
    await asyncio.sleep(0)  # 8 joins fill a write (512 keys), out at once; the 9th waits for the tick's end
    await auto.close()  # before the full write's send took its first step
    done, pending = await asyncio.wait(joins, timeout=1)
    assert not pending and all(isinstance(j.exception(), ConnectionError) for j in done)


async def test_a_tick_of_many_joins_goes_out_in_writes_of_at_most_max_write_keys() -> None:
    pool = OneConnectionPool()
    auto = AutoPipeline(pool)  # type: ignore[arg-type]
    sizes = [50, 63, 1, 40] * 12  # 1,848 keys in one tick
    joins = [asyncio.ensure_future(auto.mget([[f"k{i}:{j}" for j in range(n)]])) for i, n in enumerate(sizes)]
    await asyncio.sleep(0.01)
    for n in sizes:
        pool.conn.replies.put_nowait([None] * n)
    await asyncio.wait_for(asyncio.gather(*joins), 1)
    per_write = keys_per_write(pool.conn.writes)
    assert sum(per_write) == sum(sizes) and max(per_write) <= MAX_WRITE_KEYS and len(per_write) == 4
