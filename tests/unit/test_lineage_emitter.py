"""The serving-side emitter: aggregation per (feature, version) per window, trace
sampling, unresolved lineage and a full queue counted as broken, never blocking."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest
from opentelemetry.trace import NonRecordingSpan, SpanContext

from featurestore import emitter
from featurestore.definitions.snapshot import new_snapshot
from featurestore.emitter import EmitterConfig, LineageEmitter
from featurestore.model import BatchSource, DType, Entity, Feature, FeatureView, make_definitions
from featurestore.plan import ServingState
from lineage import metrics
from lineage.events import LineageEvent, canonical_time
from lineage.graph.memory import InMemoryGraph
from lineage.sinks import InProcessSink
from tests.support import eventually

U = Entity("user_id", DType.INT64)
A = FeatureView("a", (U,), (Feature("x", DType.INT64), Feature("y", DType.INT64)), upstream=("wh.t",),
                batch_source=BatchSource(path="/d/a.parquet"))  # fmt: skip
B = FeatureView("b", (U,), (Feature("z", DType.FLOAT64),), online_store="nowhere")
STATE = ServingState(new_snapshot(make_definitions("p", [U], [A, B], []), 4))


def span(trace_id: int) -> NonRecordingSpan:
    return NonRecordingSpan(SpanContext(trace_id, 1, is_remote=False))


def table_uri(view: FeatureView) -> str | None:
    return None if view.online_store == "nowhere" else f"redis://fs/p/{view.name}"


class Collecting:
    def __init__(self) -> None:
        self.batches: list[list[LineageEvent]] = []
        self.sending = asyncio.Event()  # a send has begun
        self.release = asyncio.Event()
        self.release.set()

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def send(self, events: Sequence[LineageEvent]) -> None:
        self.sending.set()
        await self.release.wait()
        self.batches.append(list(events))


def broken(reason: str) -> float:
    return float(metrics.BROKEN.labels(reason)._value.get())


async def test_window_aggregates_per_feature_and_version() -> None:
    sink = Collecting()
    em = LineageEmitter(sink, table_uri, EmitterConfig(window_seconds=60, trace_sample=2, service="fs@test"))
    p_xy = STATE.plan(("a:x", "a:y"), None, False)
    p_x = STATE.plan(("a:x",), None, False)
    for i in range(3):
        em.record(p_xy, STATE, 10, span(i + 1))
    em.record(p_x, STATE, 5, span(99))
    events, served, unresolved = em.build(em._window, 1_704_067_207.0)
    by_id = {e.feature_id: e for e in events}
    assert set(by_id) == {"a:x", "a:y"}
    assert by_id["a:x"].served_count == 35 and by_id["a:y"].served_count == 30
    assert by_id["a:x"].timestamp == "2024-01-01T00:00:07Z"
    assert by_id["a:x"].feature_version == 4 and by_id["a:x"].registry_version == 4
    assert by_id["a:x"].source_table == "redis://fs/p/a"
    assert by_id["a:x"].upstream_deps == ["wh.t", "file:///d/a.parquet"]
    assert by_id["a:x"].trace_ids == [format(1, "032x"), format(2, "032x")]  # sampled, bounded
    assert by_id["a:x"].service == "fs@test"
    assert (served, unresolved) == (65, 0)


async def test_a_canarys_window_has_one_event_per_snapshot_that_served_a_feature() -> None:
    # the candidate (v5) changes a:y only: a:x has the same feature version in both
    changed = FeatureView("a", (U,), (A.features[0], Feature("y", DType.FLOAT64)), upstream=A.upstream,
                          batch_source=A.batch_source)  # fmt: skip
    candidate = ServingState(
        new_snapshot(make_definitions("p", [U], [changed, B], []), 5, previous=STATE.snapshot)
    )
    em = LineageEmitter(Collecting(), table_uri, EmitterConfig(window_seconds=60, service="fs@test"))
    em.record(STATE.plan(("a:x", "a:y"), None, False), STATE, 90, None)
    em.record(candidate.plan(("a:x", "a:y"), None, False), candidate, 10, None)
    events, served, _ = em.build(em._window, 1_704_067_207.0)
    got = sorted((e.feature_id, e.feature_version, e.registry_version, e.served_count) for e in events)
    assert got == [("a:x", 4, 4, 90), ("a:x", 4, 5, 10), ("a:y", 4, 4, 90), ("a:y", 5, 5, 10)]
    assert served == 200
    graph = InMemoryGraph()  # the two a:x events of one window are two events, not one re-delivered
    await graph.write_events(events)
    assert sum(e.served_count for e in await graph.events("a:x", None, None, 10)) == 100


async def test_unresolved_lineage_is_counted_broken() -> None:
    em = LineageEmitter(Collecting(), table_uri, EmitterConfig(window_seconds=60))
    before, served_before = broken("unresolved"), float(metrics.SERVED._value.get())
    em.record(STATE.plan(("b:z", "a:x"), None, False), STATE, 7, span(1))
    em.flush()
    assert broken("unresolved") - before == 7
    assert float(metrics.SERVED._value.get()) - served_before == 14


async def test_a_join_served_without_a_span_is_recorded_without_a_trace_id() -> None:
    em = LineageEmitter(Collecting(), table_uri, EmitterConfig(window_seconds=60))
    em.record(STATE.plan(("a:x",), None, False), STATE, 3, None)  # JoinEngine.join's span is optional
    em.record(STATE.plan(("a:x",), None, False), STATE, 2, span(5))
    events, served, _ = em.build(em._window, 1_704_067_207.0)
    assert served == 5 and events[0].trace_ids == [format(5, "032x")]


async def test_a_window_that_cannot_be_built_is_counted_broken_and_the_next_one_still_flushes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    em = LineageEmitter(Collecting(), table_uri, EmitterConfig(window_seconds=0.05))
    real_build = em.build
    calls: list[int] = []

    def failing_once(window: object, start: float) -> object:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("boom")
        return real_build(window, start)  # type: ignore[arg-type]

    monkeypatch.setattr(em, "build", failing_once)
    before = broken("unresolved")
    await em.start()
    try:
        em.record(STATE.plan(("a:x", "a:y"), None, False), STATE, 4, span(1))
        await eventually(lambda: len(calls) >= 1, 5, "the first window flushed")
        assert broken("unresolved") - before == 8  # 4 rows x 2 features
        em.record(STATE.plan(("a:x",), None, False), STATE, 1, span(2))
        await eventually(lambda: len(calls) >= 2, 5, "the next window flushed")  # the task lives
    finally:
        await em.close()


async def test_full_queue_drops_and_counts_without_blocking() -> None:
    sink = Collecting()
    sink.release.clear()  # the sink is stuck
    em = LineageEmitter(sink, table_uri, EmitterConfig(window_seconds=60, queue_size=3))
    await em.start()
    plan = STATE.plan(("a:x", "a:y"), None, False)
    before = broken("queue_full")
    em.record(plan, STATE, 100, span(1))
    em.flush()  # 2 events per window; the queue holds 3
    await asyncio.wait_for(sink.sending.wait(), 5)  # the stuck sink holds the first window
    for _ in range(3):
        em.record(plan, STATE, 100, span(1))
        em.flush()  # no room: dropped, and counted
    assert broken("queue_full") - before == 3 * 200  # three windows of 2 events x 100 rows
    sink.release.set()
    await em.close()
    assert sum(len(b) for b in sink.batches) >= 2


async def test_in_process_sink_feeds_the_graph() -> None:
    graph = InMemoryGraph()
    em = LineageEmitter(InProcessSink(graph), table_uri, EmitterConfig(window_seconds=0.05, service="fs@t"))
    await em.start()
    em.record(STATE.plan(("a:x",), None, False), STATE, 3, span(7))
    try:
        # the window's own timer, not close(), hands the events to the graph
        await eventually(lambda: graph.served_by("a:x"), 5, "the window to reach the graph")
    finally:
        await em.close()
    served = await graph.served_by("a:x")
    assert [(s.server, s.count) for s in served] == [("fs@t", 3)]


@pytest.mark.parametrize("n", [1, 1000])
def test_record_is_cheap_and_never_awaits(n: int) -> None:
    em = LineageEmitter(Collecting(), table_uri)
    plan = STATE.plan(("a:x",), None, False)
    for _ in range(n):
        em.record(plan, STATE, 1, span(1))  # a plain function: it cannot wait on anything
    assert em._window[plan].rows == n


async def test_close_counts_what_the_sink_never_took() -> None:
    """A sink stuck at shutdown: the batch it is sending and the ones still queued are
    counted as undelivered instead of disappearing with the process."""
    sink = Collecting()
    sink.release.clear()  # the sink never finishes a send
    em = LineageEmitter(sink, table_uri, EmitterConfig(window_seconds=60, close_seconds=0.05))
    await em.start()
    plan = STATE.plan(("a:x", "a:y"), None, False)
    before, failed_before = broken("undelivered"), metrics.EVENTS.labels("failed")._value.get()
    em.record(plan, STATE, 3, span(1))
    em.flush()  # 2 events per window
    await asyncio.wait_for(sink.sending.wait(), 5)  # the first window is in send
    em.record(plan, STATE, 5, span(1))
    em.flush()  # the second is queued
    em.record(plan, STATE, 7, span(1))  # and the last window, flushed by close
    await em.close()
    assert broken("undelivered") - before == 2 * (3 + 5 + 7)
    assert metrics.EVENTS.labels("failed")._value.get() - failed_before == 6
    assert sink.batches == [] and em._queued == 0


async def test_a_tick_that_wakes_early_never_runs_the_windows_ahead_of_the_clock(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """uvloop can wake a timer a little before its time: the windows must still follow the
    clock (they once moved a window per early wake-up, minutes ahead within minutes)."""
    clock = [1_000_000.0]
    ticks = 0

    async def early_sleep(seconds: float) -> None:
        nonlocal ticks
        ticks += 1
        if ticks > 50:
            raise asyncio.CancelledError
        clock[0] += max(seconds - 0.0005, 0.0)  # half a millisecond early, every time

    monkeypatch.setattr("time.time", lambda: clock[0])  # the emitter's clock (the loop's is monotonic)
    monkeypatch.setattr("asyncio.sleep", early_sleep)
    em = LineageEmitter(Collecting(), table_uri, EmitterConfig(window_seconds=1.0))
    with pytest.raises(asyncio.CancelledError):
        await em._tick()
    assert em._window_start <= clock[0] + 1.0
    assert clock[0] - 1_000_000.0 > 45  # 50 wake-ups lasted about 50 windows, not 50 in a moment


async def test_close_still_drains_and_closes_the_sink_when_the_last_window_cannot_be_built() -> None:
    closed: list[bool] = []

    class Sink(Collecting):
        async def close(self) -> None:
            closed.append(True)

    def broken_uri(view: FeatureView) -> str | None:
        raise RuntimeError("store gone")

    em = LineageEmitter(Sink(), broken_uri, EmitterConfig(window_seconds=60))
    await em.start()
    em.record(STATE.plan(("a:x",), None, False), STATE, 2, span(1))
    await em.close()  # does not raise
    assert closed == [True] and all(t.done() for t in em._tasks)


async def test_a_wall_clock_stepped_back_never_holds_a_window_open_for_the_step(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """After the clock steps back by X, one tick used to sleep X (3601 s for an hour): every
    event of that time waited in one window. Now a window lasts at most two, its stamp
    never repeats an earlier one, and the stamps meet the clock again."""
    clock = [1_000_000.0]
    sleeps: list[float] = []
    starts: list[float] = []

    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        if len(sleeps) == 3:
            clock[0] -= 20.0  # NTP steps the clock back 20 s
        if len(sleeps) > 60:
            raise asyncio.CancelledError
        clock[0] += seconds

    monkeypatch.setattr("time.time", lambda: clock[0])
    monkeypatch.setattr("asyncio.sleep", sleep)
    em = LineageEmitter(Collecting(), table_uri, EmitterConfig(window_seconds=1.0))
    em._window_start = clock[0]
    flush = em.flush

    def recording_flush() -> None:
        starts.append(em._window_start)
        flush()

    em.flush = recording_flush  # type: ignore[method-assign]
    with pytest.raises(asyncio.CancelledError):
        await em._tick()
    assert max(sleeps) <= 2.0
    assert starts == sorted(set(starts))  # every window stamped after the one before
    assert abs(em._window_start - clock[0]) <= 1.0  # back on the clock


def test_an_event_time_is_written_to_the_nearest_millisecond_carrying_into_the_next_second() -> None:
    assert emitter._iso(1_700_000_000.9996) == "2023-11-14T22:13:21Z"  # not "...:20.1000Z"
    assert emitter._iso(1_700_000_000.0004) == "2023-11-14T22:13:20Z"
    assert emitter._iso(1_700_000_000.25) == "2023-11-14T22:13:20.250Z"
    assert emitter._iso(1_700_000_000.0996) == "2023-11-14T22:13:20.100Z"


def test_the_emitters_stamps_are_already_the_canonical_spelling_so_stored_event_keys_keep() -> None:
    """Event identity keys the window's canonical spelling (review s58 #7); events the
    emitter stored before keep their keys only while it writes exactly that spelling."""
    for t in (1_700_000_000.0, 1_700_000_000.25, 1_700_000_000.0996, 1_700_000_000.001):
        assert canonical_time(emitter._iso(t)) == emitter._iso(t)
