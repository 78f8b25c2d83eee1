"""A write of lone calls' reads (gRPC's: lone_calls.LONE_CALLS) waits a few loop
iterations for the reads the next calls bring (sources/redis_batch.py), over the
scripted connection of test_redis_batch.py. Each ``await asyncio.sleep(0)`` is one loop
iteration of the test; the time cap is lifted where iterations are counted."""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Coroutine
from typing import Any

import pytest

from featurestore.lone_calls import LONE_CALLS
from featurestore.sources import redis_batch
from featurestore.sources.redis_batch import COMPANY, AutoPipeline
from tests.unit.test_redis_batch import OneConnectionPool, keys_per_write


class InFlight:
    def __init__(self, value: int) -> None:
        self.value = value


class Count:
    def __init__(self) -> None:
        self.n = 0.0

    def inc(self, amount: float = 1) -> None:
        self.n += amount


def counters() -> dict[bool, tuple[Count, Count]]:
    return {held: (Count(), Count()) for held in (False, True)}


def in_call(coro: Coroutine[Any, Any, Any], calls: InFlight | None) -> asyncio.Task[Any]:
    """``coro`` in a task of its own, as a gRPC call's handler runs, in flight with ``calls``."""
    context = contextvars.copy_context()
    context.run(LONE_CALLS.set, calls)
    return asyncio.get_running_loop().create_task(coro, context=context)


async def iterations(n: int) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


async def two_reads(
    auto: AutoPipeline, pool: OneConnectionPool, calls: InFlight | None, apart: int
) -> list[int]:
    """Keys per write of two one-key reads ``apart`` loop iterations apart."""
    first = in_call(auto.mget([["a"]]), calls)
    await iterations(apart)
    second = in_call(auto.mget([["b"]]), calls)
    await asyncio.sleep(0.05)
    for reply in (b"1", b"2"):
        pool.conn.replies.put_nowait([reply])
    assert list(await asyncio.wait_for(asyncio.gather(first, second), 1)) == [[[b"1"]], [[b"2"]]]
    return keys_per_write(pool.conn.writes)


@pytest.fixture
def no_time_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(redis_batch, "HOLD_MAX_SECONDS", 3600.0)


@pytest.mark.usefixtures("no_time_cap")
async def test_a_lone_calls_read_shares_its_write_with_reads_that_come_iterations_later() -> None:
    pool, counted = OneConnectionPool(), counters()
    auto = AutoPipeline(pool, hold=8, counters=counted)  # type: ignore[arg-type]
    assert await two_reads(auto, pool, InFlight(COMPANY + 1), apart=4) == [2]
    writes, reads = counted[True]
    assert (writes.n, reads.n) == (1, 2) and counted[False][0].n == 0


@pytest.mark.usefixtures("no_time_cap")
async def test_the_wait_ends_after_hold_iterations() -> None:
    pool = OneConnectionPool()
    auto = AutoPipeline(pool, hold=4)  # type: ignore[arg-type]
    assert await two_reads(auto, pool, InFlight(COMPANY + 1), apart=12) == [1, 1]


async def test_the_wait_ends_at_its_time_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(redis_batch, "HOLD_MAX_SECONDS", 0.0)
    pool = OneConnectionPool()
    auto = AutoPipeline(pool, hold=10**6)  # type: ignore[arg-type]
    assert await two_reads(auto, pool, InFlight(COMPANY + 1), apart=4) == [1, 1]


@pytest.mark.usefixtures("no_time_cap")
async def test_a_read_does_not_wait_with_fewer_than_company_other_calls_in_flight() -> None:
    pool, counted = OneConnectionPool(), counters()
    auto = AutoPipeline(pool, hold=8, counters=counted)  # type: ignore[arg-type]
    assert await two_reads(auto, pool, InFlight(COMPANY), apart=4) == [1, 1]
    assert (counted[False][0].n, counted[False][1].n, counted[True][0].n) == (2, 2, 0)


@pytest.mark.usefixtures("no_time_cap")
async def test_a_read_outside_a_lone_call_does_not_wait() -> None:
    pool = OneConnectionPool()
    auto = AutoPipeline(pool, hold=8)  # type: ignore[arg-type]
    assert await two_reads(auto, pool, None, apart=4) == [1, 1]


@pytest.mark.usefixtures("no_time_cap")
async def test_with_hold_zero_no_read_waits() -> None:
    pool = OneConnectionPool()
    auto = AutoPipeline(pool, hold=0)  # type: ignore[arg-type]
    assert await two_reads(auto, pool, InFlight(100), apart=4) == [1, 1]


@pytest.mark.usefixtures("no_time_cap")
async def test_a_waiting_write_whose_joins_all_gave_up_is_never_sent() -> None:
    pool = OneConnectionPool()
    auto = AutoPipeline(pool, hold=8)  # type: ignore[arg-type]
    join = in_call(auto.mget([["a"]]), InFlight(COMPANY + 1))
    await iterations(2)
    join.cancel()
    await iterations(20)
    assert join.cancelled() and pool.conn.writes == [] and pool.busy == 0


@pytest.mark.usefixtures("no_time_cap")
async def test_closing_the_store_while_a_write_waits_fails_its_joins_and_sends_nothing() -> None:
    pool = OneConnectionPool()
    auto = AutoPipeline(pool, hold=1000)  # type: ignore[arg-type]
    join = in_call(auto.mget([["a"]]), InFlight(COMPANY + 1))
    await iterations(2)
    await auto.close()
    with pytest.raises(ConnectionError):
        await asyncio.wait_for(join, 1)
    await iterations(20)
    assert pool.conn.writes == [] and pool.busy == 0


@pytest.mark.usefixtures("no_time_cap")
async def test_a_waiting_write_that_fills_up_goes_out_at_once() -> None:
    pool = OneConnectionPool()
    auto = AutoPipeline(pool, hold=10**6)  # type: ignore[arg-type]
    calls = InFlight(COMPANY + 1)
    joins = [in_call(auto.mget([[f"k{i}:{j}" for j in range(64)]]), calls) for i in range(9)]
    await iterations(3)  # 8 joins fill a write (512 keys): out though its wait is far from over
    assert keys_per_write(pool.conn.writes) == [512]
    await auto.close()  # the 9th's write still waits; the 8's send is ended
    done, pending = await asyncio.wait(joins, timeout=1)
    assert not pending and all(isinstance(j.exception(), ConnectionError) for j in done)


@pytest.mark.usefixtures("no_time_cap")
async def test_a_read_of_another_kind_of_call_joining_a_waiting_write_ends_the_wait() -> None:
    pool = OneConnectionPool()
    auto = AutoPipeline(pool, hold=10**6)  # type: ignore[arg-type]
    lone = in_call(auto.mget([["a"]]), InFlight(COMPANY + 1))
    await iterations(3)
    http = in_call(auto.mget([["b"]]), None)  # an HTTP join's read: it does not wait
    await iterations(4)
    assert keys_per_write(pool.conn.writes) == [2]  # both, long before the wait's end
    for reply in (b"1", b"2"):
        pool.conn.replies.put_nowait([reply])
    assert list(await asyncio.wait_for(asyncio.gather(lone, http), 1)) == [[[b"1"]], [[b"2"]]]


class RefusingPool(OneConnectionPool):
    async def acquire(self) -> Any:
        raise ConnectionError("refused")


async def test_a_write_that_never_got_a_connection_is_not_counted() -> None:
    pool, counted = RefusingPool(), counters()
    auto = AutoPipeline(pool, hold=0, counters=counted)  # type: ignore[arg-type]
    with pytest.raises(ConnectionError, match="refused"):
        await asyncio.wait_for(auto.mget([["a"]]), 1)
    assert [count.n for pair in counted.values() for count in pair] == [0, 0, 0, 0]
