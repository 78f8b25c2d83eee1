"""Auto-pipelining (sources/redis_batch.py) when Redis stops answering, on a real
redis-server: a tick's send ends once every join in it gave up, and not before."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from featurestore.sources.redis_batch import AutoPipeline
from featurestore.sources.redis_pool import LeanPool
from tests.servers import RedisServer
from tests.support import eventually


@pytest.fixture
async def frozen(tmp_path: Path) -> AsyncIterator[tuple[RedisServer, LeanPool, AutoPipeline]]:
    """A Redis that answered once (a connection is open) and then froze (SIGSTOP)."""
    server = RedisServer(tmp_path / "r").start()
    pool = LeanPool(server.url, 2)
    auto = AutoPipeline(pool)
    try:
        assert await auto.mget([["k"]]) == [[None]]
        server.pause()
        yield server, pool, auto
    finally:
        server.resume()
        await auto.close()
        await pool.close()
        server.stop()


async def test_a_join_that_gives_up_on_a_frozen_redis_hands_its_connection_back(
    frozen: tuple[RedisServer, LeanPool, AutoPipeline],
) -> None:
    server, pool, auto = frozen
    for _ in range(3):  # more give-ups than the pool has connections: none is held
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.1):
                await auto.mget([["k"]])
        await eventually(lambda: pool.busy == 0, 2, "the connection handed back")
    server.resume()
    assert await auto.mget([["k"], ["j"]]) == [[None], [None]]  # the dropped socket reconnects


async def test_a_tick_another_join_still_waits_for_keeps_its_send(
    frozen: tuple[RedisServer, LeanPool, AutoPipeline],
) -> None:
    server, pool, auto = frozen

    async def impatient() -> None:
        async with asyncio.timeout(0.1):
            await auto.mget([["k"]])

    patient = asyncio.ensure_future(auto.mget([["j"]]))
    gave_up = asyncio.ensure_future(impatient())  # the same tick: one send for both
    with pytest.raises(TimeoutError):
        await gave_up
    await asyncio.sleep(0.1)
    assert pool.busy == 1 and not patient.done()  # still sent, still waited for
    server.resume()
    assert await asyncio.wait_for(patient, 5) == [[None]]


async def test_a_tick_whose_joins_all_gave_up_before_the_flush_sends_nothing(
    frozen: tuple[RedisServer, LeanPool, AutoPipeline],
) -> None:
    server, pool, auto = frozen
    read = asyncio.ensure_future(auto.mget([["k"]]))
    await asyncio.sleep(0)  # the join awaits its reply; the flush is queued behind it
    read.cancel()
    await asyncio.sleep(0.05)
    assert read.cancelled() and pool.busy == 0  # a send would hold a connection to the frozen server
    server.resume()
    assert await auto.mget([["k"]]) == [[None]]
