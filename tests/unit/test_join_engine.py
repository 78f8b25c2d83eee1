"""JoinEngine behaviour: dedupe, statuses, per-store isolation, deadlines.

The engine is driven through the OnlineSource port: the memory adapter for data,
and two small scripted adapters standing in for a failing and a hanging store
(the real-server failure tests live with each adapter's integration tests).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

import pyarrow as pa
import pytest
from prometheus_client import REGISTRY

from featurestore import metrics
from featurestore.cache import CachedSource, LRUCache
from featurestore.definitions.snapshot import new_snapshot
from featurestore.errors import DeadlineExceeded, InvalidArgument, Unavailable
from featurestore.join import JoinEngine, JoinRequest, Limits
from featurestore.model import (
    DType,
    Entity,
    Feature,
    FeatureRef,
    FeatureService,
    FeatureView,
    Status,
    make_definitions,
)
from featurestore.plan import CanaryRoute, ServingState, canary_route
from featurestore.registry.admin import routing_entity
from featurestore.rows import view_schema
from featurestore.sources.base import SourceState, ViewQuery, ViewRead
from featurestore.sources.memory import MemorySource

U, ITEM = Entity("user_id", DType.INT64), Entity("item_id", DType.INT64)
NOW_US = int(time.time() * 1e6)
UV = FeatureView("uv", (U,), (Feature("a", DType.INT64), Feature("b", DType.STRING)), ttl_seconds=3600)
IV = FeatureView("iv", (ITEM,), (Feature("p", DType.FLOAT64),))
UI = FeatureView("ui", (U, ITEM), (Feature("s", DType.FLOAT64),))
SLOW = FeatureView("slow", (U,), (Feature("x", DType.INT64),), online_store="slow")
BROKEN = FeatureView("broken", (U,), (Feature("y", DType.INT64),), online_store="broken")


class RecordingMemory(MemorySource):
    def __init__(self) -> None:
        super().__init__("default")
        self.queries: list[list[ViewQuery]] = []

    async def read(self, queries: Sequence[ViewQuery]) -> list[ViewRead | BaseException]:
        self.queries.append(list(queries))
        return await super().read(queries)


class HangingSource(MemorySource):
    """A store that never answers: it records when a read starts and when the engine
    abandons it (cancels it)."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.reading = asyncio.Event()
        self.abandoned = asyncio.Event()

    async def read(self, queries: Sequence[ViewQuery]) -> list[ViewRead | BaseException]:
        self.reading.set()
        try:
            await asyncio.Event().wait()  # nothing ever sets it
        except asyncio.CancelledError:
            self.abandoned.set()
            raise
        raise AssertionError("unreachable")


class BrokenSource(MemorySource):
    async def read(self, queries: Sequence[ViewQuery]) -> list[ViewRead | BaseException]:
        raise ConnectionError("store is down")

    def state(self) -> SourceState:
        return SourceState.DOWN


def table(view: FeatureView, data: dict[str, list[Any]]) -> pa.Table:
    schema = view_schema(view)
    return pa.table({f.name: pa.array(data[f.name], f.type) for f in schema}, schema=schema)


@pytest.fixture
async def engine() -> JoinEngine:
    mem = RecordingMemory()
    stores = {"default": mem, "slow": HangingSource("slow"), "broken": BrokenSource("broken")}
    views = [UV, IV, UI, SLOW, BROKEN]
    for name, st in stores.items():
        await st.prepare([v for v in views if v.online_store == name])
    await mem.write(
        UV,
        table(
            UV,
            {
                "user_id": [1, 2, 3],
                "a": [10, 20, 30],
                "b": ["x", "y", None],
                "event_timestamp": [NOW_US, NOW_US, NOW_US - 7200 * 10**6],
            },
        ),
        0,
    )
    await mem.write(IV, table(IV, {"item_id": [7, 8], "p": [0.7, 0.8], "event_timestamp": [NOW_US] * 2}), 0)
    await mem.write(
        UI,
        table(UI, {"user_id": [1, 1], "item_id": [7, 8], "s": [1.7, 1.8], "event_timestamp": [NOW_US] * 2}),
        0,
    )
    defs = make_definitions("p", [U, ITEM], views, [])
    return JoinEngine(stores, ServingState(new_snapshot(defs, 4)), Limits(max_rows=100))


def deadline(seconds: float = 1.0) -> float:
    return time.monotonic() + seconds


def cols(result: Any) -> dict[str, Any]:
    return {c.name: c for c in result.columns}


async def test_statuses_and_nulls(engine: JoinEngine) -> None:
    res = await engine.join(JoinRequest({"user_id": [1, 3, 9]}, ("uv:a", "uv:b")), deadline())
    c = cols(res)
    assert c["user_id"].values == [1, 3, 9]
    assert c["a"].values == [10, None, None]
    assert c["a"].outcome.statuses == [Status.PRESENT, Status.OUTSIDE_MAX_AGE, Status.NOT_FOUND]
    assert c["b"].values == ["x", None, None]
    assert res.registry_version == 4 and res.partial is False and res.rows == 3


async def test_keys_are_deduplicated_before_reading(engine: JoinEngine) -> None:
    mem = engine.stores["default"]
    assert isinstance(mem, RecordingMemory)
    res = await engine.join(
        JoinRequest({"user_id": [1, 1, 1, 2], "item_id": [7, 8, 7, 7]}, ("uv:a", "iv:p", "ui:s")), deadline()
    )
    [queries] = mem.queries  # one read call for the one store, all three views in it
    keys = {q.view.name: list(q.keys) for q in queries}
    assert keys == {"uv": [1, 2], "iv": [7, 8], "ui": [(1, 7), (1, 8), (2, 7)]}
    c = cols(res)
    assert c["a"].values == [10, 10, 10, 20]
    assert c["p"].values == [0.7, 0.8, 0.7, 0.7]
    assert c["s"].values == [1.7, 1.8, 1.7, None]


async def test_failed_store_is_unavailable_others_answer(engine: JoinEngine) -> None:
    res = await engine.join(JoinRequest({"user_id": [1, 2]}, ("uv:a", "broken:y")), deadline())
    c = cols(res)
    assert res.partial is True
    assert c["a"].values == [10, 20]
    assert c["y"].values == [None, None]
    assert c["y"].outcome.statuses == [Status.UNAVAILABLE] * 2


async def test_hanging_store_times_out_within_the_deadline(engine: JoinEngine) -> None:
    hanging = engine.stores["slow"]
    assert isinstance(hanging, HangingSource)
    # the store never answers: the join returns only because the deadline abandons it
    res = await engine.join(JoinRequest({"user_id": [1]}, ("slow:x", "uv:a", "broken:y")), deadline(0.2))
    await asyncio.wait_for(hanging.abandoned.wait(), 5)  # and its read is cancelled, not left running
    c = cols(res)
    assert c["x"].outcome.statuses == [Status.UNAVAILABLE]
    assert c["a"].values == [10]
    assert res.partial


class RefusingSource(MemorySource):
    """A store whose circuit is open: every view answered Unavailable at once."""

    async def read(self, queries: Sequence[ViewQuery]) -> list[ViewRead | BaseException]:
        return [Unavailable("the store is down")] * len(queries)


def read_durations(view: str, store: str) -> tuple[float, float]:
    """featurestore_view_read_duration_seconds' (count, sum) for the view."""
    metrics.flush()
    labels = {"view": view, "store": store}
    get = REGISTRY.get_sample_value
    return (
        get("featurestore_view_read_duration_seconds_count", labels) or 0.0,
        get("featurestore_view_read_duration_seconds_sum", labels) or 0.0,
    )


async def test_a_read_the_deadline_cuts_is_timed_at_the_deadline_and_a_failed_read_not_at_all(
    engine: JoinEngine,
) -> None:
    engine.stores["broken"] = RefusingSource("broken")
    slow, broken = read_durations("slow", "slow"), read_durations("broken", "broken")
    await engine.join(JoinRequest({"user_id": [1]}, ("slow:x", "broken:y")), deadline(0.2))
    hanging = engine.stores["slow"]
    assert isinstance(hanging, HangingSource)
    await asyncio.wait_for(hanging.abandoned.wait(), 5)
    await asyncio.sleep(0)  # (the cancelled read's task unwinds)
    count, total = read_durations("slow", "slow")
    assert count == slow[0] + 1 and total - slow[1] >= 0.15  # a paused store's reads show as slow ones
    assert read_durations("broken", "broken") == broken  # counted as a failure, not as a fast read


async def test_expired_deadline_is_deadline_exceeded(engine: JoinEngine) -> None:
    with pytest.raises(DeadlineExceeded):
        await engine.join(JoinRequest({"user_id": [1]}, ("uv:a",)), time.monotonic() - 1)


async def test_swap_keeps_inflight_request_on_its_snapshot(engine: JoinEngine) -> None:
    old = engine.state
    hanging = engine.stores["slow"]
    assert isinstance(hanging, HangingSource)
    task = asyncio.create_task(engine.join(JoinRequest({"user_id": [1]}, ("slow:x",)), deadline(0.2)))
    await asyncio.wait_for(hanging.reading.wait(), 5)  # in flight on version 4
    engine.swap(ServingState(new_snapshot(old.definitions, 5)))
    res = await task
    assert res.registry_version == 4
    res2 = await engine.join(JoinRequest({"user_id": [1]}, ("uv:a",)), deadline())
    assert res2.registry_version == 5


async def test_cancelled_join_cancels_its_store_reads(engine: JoinEngine) -> None:
    hanging = engine.stores["slow"]
    assert isinstance(hanging, HangingSource)
    # two stores: the fan-out runs a task per store
    task = asyncio.create_task(engine.join(JoinRequest({"user_id": [1]}, ("uv:a", "slow:x")), deadline(60)))
    await asyncio.wait_for(hanging.reading.wait(), 5)
    task.cancel()  # the client went away
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.wait_for(hanging.abandoned.wait(), 5)  # the store read did not outlive the request


def test_canary_routes_by_one_entity_whatever_else_the_request_lists() -> None:
    defs = make_definitions(
        "p", [U, ITEM], [UV, UI], [FeatureService("svc", (FeatureRef("uv", "a"), FeatureRef("ui", "s")))]
    )
    assert routing_entity(defs, "svc", None) == "user_id"  # keys both views
    assert routing_entity(defs, "svc", "item_id") == "item_id"
    with pytest.raises(InvalidArgument, match="keys no feature"):
        routing_entity(defs, "svc", "shop")
    base = ServingState(new_snapshot(defs, 1))
    cand = ServingState(new_snapshot(defs, 2))
    state = ServingState(new_snapshot(defs, 1), canaries={"svc": CanaryRoute(0.5, "user_id", cand)})
    sides = set()
    for user in range(1, 200):
        seen = {
            canary_route(state, "svc", {"user_id": [user], "item_id": [item]}).version
            for item in range(1, 20)
        }
        assert len(seen) == 1, user  # the items do not move a user across
        sides |= seen
    assert sides == {1, 2}
    assert canary_route(state, "other", {"user_id": [1]}) is state
    assert canary_route(state, "svc", {"item_id": [1]}) is state  # missing entity: validation reports it
    assert base.version == 1


@pytest.mark.parametrize("with_a_second_store", [False, True], ids=["alone", "beside-another-store"])
@pytest.mark.parametrize("outage", ["fails", "hangs"])
async def test_cached_keys_are_served_while_their_store_fails_or_hangs(
    outage: str, with_a_second_store: bool
) -> None:
    """A store outage costs only what the cache cannot answer: a view cached in full
    is PRESENT, a partly cached one is UNAVAILABLE only for the keys it still owed. The
    same when the store hangs (Redis paused before its probe opens the circuit) and the
    deadline gives its read up (review s55), whether the store is read alone (the
    deadline guard) or beside another store (the engine's wait)."""

    class Flaky(MemorySource):
        down = False

        async def read(self, queries: Sequence[ViewQuery]) -> list[ViewRead | BaseException]:
            if self.down:
                if outage == "hangs":
                    await asyncio.Event().wait()  # never answers: only the deadline ends it
                raise ConnectionError("store is down")
            return await super().read(queries)

    inner = Flaky("remote")
    remote_uv = FeatureView("ruv", (U,), UV.features, online_store="remote")
    remote_iv = FeatureView("riv", (ITEM,), IV.features, online_store="remote")
    await inner.prepare([remote_uv, remote_iv])
    await inner.write(
        remote_uv,
        table(
            remote_uv, {"user_id": [1, 2], "a": [10, 20], "b": ["x", "y"], "event_timestamp": [NOW_US] * 2}
        ),
        0,
    )
    await inner.write(
        remote_iv, table(remote_iv, {"item_id": [7], "p": [0.7], "event_timestamp": [NOW_US]}), 0
    )
    local = MemorySource("local")
    local_iv = FeatureView("liv", (ITEM,), (Feature("q", DType.FLOAT64),), online_store="local")
    await local.prepare([local_iv])
    await local.write(local_iv, table(local_iv, {"item_id": [7], "q": [0.5], "event_timestamp": [NOW_US]}), 0)
    defs = make_definitions("p", [U, ITEM], [remote_uv, remote_iv, local_iv], [])
    eng = JoinEngine(
        {"remote": CachedSource(inner, LRUCache(100, 30)), "local": local},
        ServingState(new_snapshot(defs, 1)),
        Limits(max_rows=100),
    )
    also = ("liv:q",) if with_a_second_store else ()
    # warm: users 1 and 9 (not found) and item 7
    await eng.join(JoinRequest({"user_id": [1, 9], "item_id": [7, 7]}, ("ruv:a", "riv:p")), deadline())
    inner.down = True
    started = time.monotonic()
    res = await eng.join(
        JoinRequest({"user_id": [1, 2, 9], "item_id": [7, 7, 7]}, ("ruv:a", "riv:p", *also)), deadline(0.3)
    )
    assert time.monotonic() - started < 5  # (ended by the deadline when the store hangs, not by the hang)
    c = cols(res)
    assert res.partial is True
    assert c["p"].values == [0.7] * 3 and c["p"].outcome.statuses == [Status.PRESENT] * 3
    assert c["a"].values == [10, None, None]
    assert c["a"].outcome.statuses == [Status.PRESENT, Status.UNAVAILABLE, Status.NOT_FOUND]
    assert c["a"].outcome.event_ts_us == [NOW_US, None, None]
    if with_a_second_store:  # read in time: as it is
        assert c["q"].values == [0.5] * 3 and c["q"].outcome.statuses == [Status.PRESENT] * 3
    # nothing cached for the view at all: the store's error, as before
    res = await eng.join(JoinRequest({"user_id": [5], "item_id": [7]}, ("ruv:a", *also)), deadline(0.3))
    assert cols(res)["a"].outcome.statuses == [Status.UNAVAILABLE]


async def test_the_service_metrics_of_registry_versions_no_longer_served_are_dropped_at_a_swap(
    engine: JoinEngine,
) -> None:
    defs = make_definitions("p", [U, ITEM], [UV], [FeatureService("retired_svc", (FeatureRef("uv", "a"),))])
    for version in (10, 11, 12):
        engine.swap(ServingState(new_snapshot(defs, version)))
        await engine.join(JoinRequest({"user_id": [1]}, (), feature_service="retired_svc"), deadline())
    metrics.flush()
    served = {
        labels["registry_version"]
        for family in REGISTRY.collect()
        if family.name == "featurestore_service_requests"
        for sample in family.samples
        if (labels := sample.labels).get("service") == "retired_svc"
    }
    assert served == {"12"}
