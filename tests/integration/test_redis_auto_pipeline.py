"""Auto-pipelining (sources/redis_batch.py) when Redis stops answering, on a real
redis-server: a tick's send ends once every join in it gave up, and not before."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from redis import exceptions as redis_errors
from redis.exceptions import ResponseError

from featurestore.sources import redis_batch
from featurestore.sources.redis_batch import MAX_WRITE_KEYS, AutoPipeline
from featurestore.sources.redis_pool import LeanPool
from tests.servers import RedisServer
from tests.support import REDIS_CONNECT_MS, eventually
from tests.unit.test_redis_batch_hold import Count, InFlight, in_call, iterations


@asynccontextmanager
async def pipeline(url: str, size: int) -> AsyncIterator[tuple[LeanPool, AutoPipeline]]:
    """A pool of ``size`` connections to ``url`` and its pipeline, closed after."""
    pool = LeanPool(url, size, socket_connect_timeout=REDIS_CONNECT_MS / 1000)
    auto = AutoPipeline(pool)
    try:
        yield pool, auto
    finally:
        await auto.close()
        await pool.close()


@pytest.fixture
def server(own_redis: RedisServer) -> RedisServer:
    """A redis-server of this test's own (some tests freeze it or change its users)."""
    return own_redis


@pytest.fixture
async def frozen(server: RedisServer) -> AsyncIterator[tuple[RedisServer, LeanPool, AutoPipeline]]:
    """A Redis that answered once (a connection is open) and then froze (SIGSTOP)."""
    async with pipeline(server.url, 2) as (pool, auto):
        try:
            assert await auto.mget([["k"]]) == [[None]]
            server.pause()
            yield server, pool, auto
        finally:
            server.resume()


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


@pytest.fixture
async def redis_pool(server: RedisServer) -> AsyncIterator[tuple[RedisServer, LeanPool, AutoPipeline]]:
    async with pipeline(server.url, 4) as (pool, auto):
        yield server, pool, auto


async def test_an_error_reply_fails_only_the_join_it_answers(server: RedisServer) -> None:
    # a user that may read keys under ok: only; its denied MGET gets an error reply
    server.cli("ACL", "SETUSER", "reader", "on", ">pw", "~ok:*", "+mget")
    async with pipeline(server.url.replace("redis://", "redis://reader:pw@"), 2) as (_, auto):
        server.cli("SET", "ok:1", "one")
        answers: list[Any] = await asyncio.gather(  # one tick: one write, the denied one first
            auto.mget([["secret:1"]]),
            auto.mget([["ok:1"], ["ok:2"]]),
            auto.mget([["ok:1"]]),
            return_exceptions=True,
        )
        denied, allowed, more = answers
        assert isinstance(denied, ResponseError) and "permission" in str(denied).lower()
        assert allowed == [[b"one"], [None]] and more == [[b"one"]]
        # a join whose first MGET is denied: its second reply is read too, not left to the next join
        answers = await asyncio.gather(
            auto.mget([["secret:1"], ["ok:1"]]), auto.mget([["ok:2"]]), return_exceptions=True
        )
        assert isinstance(answers[0], ResponseError) and answers[1] == [[None]]
        assert await auto.mget([["ok:1"]]) == [[b"one"]]  # the connection stayed in step


async def test_a_closed_pipeline_fails_what_it_has_not_sent_and_opens_no_connection(
    server: RedisServer,
) -> None:
    name = "closing"
    pool = LeanPool(f"{server.url}?client_name={name}", 2)
    auto = AutoPipeline(pool)
    read = asyncio.ensure_future(auto.mget([["k"]]))
    await asyncio.sleep(0)  # queued, not sent
    await auto.close()
    await pool.close()
    with pytest.raises(ConnectionError):
        await asyncio.wait_for(read, 2)
    await asyncio.sleep(0.05)
    assert f"name={name} " not in server.cli("CLIENT", "LIST")
    with pytest.raises(ConnectionError):
        await auto.mget([["k"]])


async def test_closing_ends_a_send_in_flight_and_fails_its_joins(
    frozen: tuple[RedisServer, LeanPool, AutoPipeline],
) -> None:
    _, pool, auto = frozen
    read = asyncio.ensure_future(auto.mget([["k"]]))
    await asyncio.sleep(0.05)  # sent to the frozen server, waiting for the reply
    assert pool.busy == 1
    await auto.close()  # (a frozen server: were close() to wait on it, the test would hang)
    assert read.done() and pool.busy == 0  # ended by the time close() returns
    with pytest.raises(ConnectionError):
        await read


async def test_a_redis_killed_under_a_send_fails_its_joins_and_hands_the_connection_back(
    frozen: tuple[RedisServer, LeanPool, AutoPipeline],
) -> None:
    server, pool, auto = frozen
    reads = [asyncio.ensure_future(auto.mget([[k]])) for k in "ab"]  # one tick, one send
    await asyncio.sleep(0.05)
    assert pool.busy == 1
    server.kill()  # the socket is reset under the send
    for read in reads:
        with pytest.raises(redis_errors.ConnectionError, match="reset"):  # why, not a generic message
            await asyncio.wait_for(read, 5)
    await eventually(lambda: pool.busy == 0, 2, "the connection handed back")


async def test_a_join_that_gives_up_waiting_for_a_connection_leaves_no_send_behind(
    frozen: tuple[RedisServer, LeanPool, AutoPipeline],
) -> None:
    server, pool, auto = frozen
    holders = []
    for _ in range(2):  # two ticks, two sends: both connections held by the frozen server
        holders.append(asyncio.ensure_future(auto.mget([["k"]])))
        await asyncio.sleep(0.02)
    assert pool.busy == 2
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.1):
            await auto.mget([["j"]])  # its send waits for a connection, then is cancelled
    server.resume()
    assert [await asyncio.wait_for(h, 5) for h in holders] == [[[None]], [[None]]]
    await eventually(lambda: pool.busy == 0, 2, "every connection back")
    # the fixture's read and the two holders': the given-up join's MGET never went out
    assert "cmdstat_mget:calls=3," in server.cli("INFO", "commandstats")


async def test_a_reset_under_load_drops_no_read(
    redis_pool: tuple[RedisServer, LeanPool, AutoPipeline],
) -> None:
    _, pool, auto = redis_pool
    stop = asyncio.Event()
    failures: list[BaseException] = []

    async def reader(i: int) -> None:
        while not stop.is_set():
            try:
                await auto.mget([[f"k{i}"]])
            except Exception as e:
                failures.append(e)
            await asyncio.sleep(0)

    await asyncio.gather(*(auto.mget([[f"w{i}"]]) for i in range(4)))  # every connection open
    readers = [asyncio.ensure_future(reader(i)) for i in range(8)]
    for _ in range(20):
        await asyncio.sleep(0.005)
        pool.reset()
    stop.set()
    await asyncio.gather(*readers)
    assert failures == []


async def test_a_tick_of_many_joins_goes_out_in_writes_of_bounded_size(server: RedisServer) -> None:
    name = "bounded"  # the client name Redis lists the pipeline's connections under
    async with pipeline(f"{server.url}?client_name={name}", 8) as (_, auto):
        joins = MAX_WRITE_KEYS // 50 * 3  # three writes' worth of 50-key joins, in one tick
        replies = await asyncio.gather(*(auto.mget([[f"k{i}:{j}" for j in range(50)]]) for i in range(joins)))
        assert all(r == [[None] * 50] for r in replies)
        # each write out on its own connection at once: three of them
        assert server.cli("CLIENT", "LIST").count(f"name={name} ") == 3


async def test_a_reset_hands_every_connection_back(
    redis_pool: tuple[RedisServer, LeanPool, AutoPipeline],
) -> None:
    _, pool, _ = redis_pool
    conns = [await pool.acquire() for _ in range(4)]
    for conn in conns:  # each one connected
        await conn.request(b"PING\r\n", (1,))
        assert conn.connected
    for conn in conns:
        pool.release(conn)
    pool.reset()  # (over at once: a close does not wait for the peer)
    assert pool.busy == 0
    assert await asyncio.wait_for(asyncio.gather(*(pool.acquire() for _ in range(4))), 1)


async def test_a_send_that_gets_no_connection_fails_its_joins_and_leaves_no_task_error_behind(
    redis_server: RedisServer,
) -> None:
    loop = asyncio.get_running_loop()
    unhandled: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _, context: unhandled.append(context))
    try:
        async with pipeline(redis_server.url, 2) as (pool, auto):
            assert await auto.mget([["k"]]) == [[None]]
            await pool.close()  # every acquire fails from now on (as a refused connection would)
            for _ in range(3):
                with pytest.raises(ConnectionError, match="pool is closed"):
                    await auto.mget([["k"]])
            await asyncio.sleep(0)
            gc.collect()  # a task whose exception nobody retrieved reports it when freed
            await asyncio.sleep(0)
    finally:
        loop.set_exception_handler(None)
    assert unhandled == []


async def test_lone_calls_reads_iterations_apart_share_one_write_and_get_their_own_values(
    server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(redis_batch, "HOLD_MAX_SECONDS", 3600.0)  # iterations decide here
    for i in range(3):
        server.cli("SET", f"lone:{i}", f"v{i}")
    counters = {held: (Count(), Count()) for held in (False, True)}
    pool = LeanPool(server.url, 4, socket_connect_timeout=REDIS_CONNECT_MS / 1000)
    auto = AutoPipeline(pool, hold=16, counters=counters)  # type: ignore[arg-type]
    try:
        calls = InFlight(redis_batch.COMPANY + 1)
        joins = []
        for i in range(3):
            joins.append(in_call(auto.mget([[f"lone:{i}", "lone:none"]]), calls))
            await iterations(3)
        replies = await asyncio.wait_for(asyncio.gather(*joins), 5)
        assert replies == [[[f"v{i}".encode(), None]] for i in range(3)]
        writes, reads = counters[True]
        assert (writes.n, reads.n) == (1, 3)
    finally:
        await auto.close()
        await pool.close()
