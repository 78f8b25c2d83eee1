"""The Redis store's health loop on a real redis-server: a reset of every connection does
not mark a Redis that answers down, and close() always ends the loop."""

from __future__ import annotations

import asyncio
import random
import sys
import time
import uuid
from typing import Any

import pyarrow as pa

from featurestore.definitions.snapshot import new_snapshot
from featurestore.join import JoinEngine, JoinRequest, Limits
from featurestore.model import DType, Entity, Feature, FeatureView, Status, make_definitions
from featurestore.plan import ServingState
from featurestore.rows import view_schema
from featurestore.sources.base import SourceState
from featurestore.sources.redis import RedisOptions, RedisSource
from tests.servers import RedisServer
from tests.support import REDIS_CONNECT_MS

U = Entity("user_id", DType.INT64)
V = FeatureView("prof", (U,), (Feature("age", DType.INT64), Feature("name", DType.STRING)))


def users(ids: list[int]) -> pa.Table:
    schema = view_schema(V)
    data: dict[str, list[Any]] = {
        "user_id": ids,
        "age": ids,
        "name": [f"u{i}" for i in ids],
        "event_timestamp": [int(time.time() * 1e6)] * len(ids),
    }
    return pa.table({f.name: pa.array(data[f.name], f.type) for f in schema}, schema=schema)


async def test_killing_every_client_connection_under_joins_never_marks_the_store_down(
    own_redis: RedisServer,
) -> None:
    server = own_redis  # of this test's own: CLIENT KILL TYPE normal closes every client
    project = f"p{uuid.uuid4().hex[:8]}"
    options = RedisOptions(
        url=server.url, pool_size=8, health_interval_ms=10, connect_timeout_ms=REDIS_CONNECT_MS
    )
    src = RedisSource("default", project, options)
    await src.start()
    downs: list[str] = []
    set_state = src._set_state

    def spy(state: SourceState, reason: str = "") -> None:
        if state is SourceState.DOWN:
            downs.append(f"{reason} from {sys._getframe(1).f_code.co_name}")
        set_state(state, reason)

    src._set_state = spy  # type: ignore[method-assign]
    await src.write(V, users(list(range(50))), 1)
    src.serving({"prof": 1})  # the probe checks the marker too: its pipeline's connection is killed as well
    defs = make_definitions(project, [U], [V], [])
    engine = JoinEngine({"default": src}, ServingState(new_snapshot(defs, 1), {"prof": 1}), Limits())
    statuses: dict[Status, int] = {}
    problems: list[str] = []
    end = time.monotonic() + 2.5

    async def joins(n: int) -> None:
        while time.monotonic() < end:
            keys = random.sample(range(50), n)
            # 10 s: the loaded CI machine may stall a join past 1 s; the test is about the state, not the time
            res = await engine.join(JoinRequest({"user_id": keys}, ("prof:age",)), time.monotonic() + 10)
            for s in res.columns[1].outcome.statuses:  # type: ignore[union-attr]
                statuses[s] = statuses.get(s, 0) + 1
            if res.partial:
                problems.append(repr(res.columns[1].outcome))
            else:
                assert res.columns[1].values == keys  # age == user_id
            await asyncio.sleep(0.001)

    async def kills() -> int:
        n = 0
        while time.monotonic() < end:
            await asyncio.sleep(0.1)
            await asyncio.to_thread(server.cli, "CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
            n += 1
        return n

    killer = asyncio.ensure_future(kills())
    try:
        await asyncio.gather(killer, *(joins(random.choice([1, 10])) for _ in range(8)))
    finally:
        await src.close()
    assert killer.result() >= 10
    assert downs == []
    assert set(statuses) == {Status.PRESENT}, (statuses, problems[:3])


async def test_close_ends_the_health_loop_every_time_on_a_busy_event_loop(redis_server: RedisServer) -> None:
    async def hog() -> None:  # other work on the loop, so a cancel lands at any point of a probe
        while True:
            sum(range(20000))
            await asyncio.sleep(0)

    hogs = [asyncio.ensure_future(hog()) for _ in range(20)]
    left = 0
    try:
        for _ in range(40):
            src = RedisSource("r", "p", RedisOptions(url=redis_server.url, health_interval_ms=10))
            await src.start()
            await asyncio.sleep(random.random() * 0.05)
            await src.close()
            assert src._health is not None
            left += not src._health.done()
    finally:
        for h in hogs:
            h.cancel()
        await asyncio.gather(*hogs, return_exceptions=True)
    assert left == 0
