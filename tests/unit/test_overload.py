"""The worker's load shedder: a hard cap on joins in flight, and a limit that drops when
the event loop's lag averages above the target for two intervals in a row (a standing
queue; one, when its joins have more than an interval of CPU left) and is back when it
keeps up again."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Coroutine
from typing import Any

import grpc
import pytest
import uvloop
from prometheus_client import REGISTRY

from featurestore import metrics
from featurestore.api.grpc import JOIN_METHOD
from featurestore.api.http import HttpApi
from featurestore.config import LimitsConfig
from featurestore.errors import Code
from featurestore.health import Readiness
from featurestore.overload import (
    CALM_INTERVALS,
    DEADLINE,
    FLOOR_SECONDS,
    INFLIGHT,
    INTERVAL,
    LATENCY,
    MIN_FLOOR,
    MIN_LIMIT,
    PERIOD,
    LoadShedder,
)
from featurestore.push import PushService
from featurestore.refusal import shed
from tests.support import eventually
from tests.unit.conftest import Serve
from tests.unit.test_api_edges import client, join_message, make_engine

TARGET = 0.005


class CpuClock:
    """The loop thread's CPU seconds as a test sets them (frozen: no join's cost is measured)."""

    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def loaded(inflight: int, cap: int = 1024, clock: CpuClock | None = None, **kw: Any) -> LoadShedder:
    """A shedder with ``inflight`` joins admitted; its floor stays ``MIN_LIMIT`` joins
    unless ``clock`` moves."""
    s = LoadShedder(cap, TARGET, cpu_clock=clock or CpuClock(), **kw)
    assert [s.admit() for _ in range(inflight)] == [None] * inflight
    return s


def samples(s: LoadShedder, lags: list[float], start: float = 1.0) -> float:
    """One sample per PERIOD from ``start``; the time of the next one."""
    for i, lag in enumerate(lags):
        s.observe(lag, start + i * PERIOD)
    return start + len(lags) * PERIOD


def test_requests_beyond_the_hard_cap_are_shed_and_the_next_one_after_a_completion_is_not() -> None:
    s = loaded(3, cap=3)
    assert s.admit() == INFLIGHT
    s.done()
    assert s.admit() is None and s.inflight == 3


def test_a_loop_late_for_two_intervals_in_a_row_cuts_the_limit_in_proportion_to_its_mean_lag() -> None:
    s = loaded(200)
    at = samples(s, [0.00625] * 20)  # late by 6.25 ms for 190 ms: one late interval may be a burst
    assert s.limit == 1024
    samples(s, [0.00625], start=at)  # and at 200 ms, the second: a standing queue
    assert s.limit == pytest.approx(200 * 0.8)  # the joins in flight x 5 / 6.25
    assert s.admit() == LATENCY  # 200 in flight >= 160: shed, below the hard cap


def test_a_loop_late_every_other_sample_is_a_standing_queue() -> None:
    """A saturated worker's loop (the module docstring): its store replies answered in
    one long iteration, then a wait for the next ones; half its samples on time."""
    s = loaded(200)
    samples(s, [0.025, 0.0] * 10 + [0.025])  # 12.5 ms late on average over the second interval
    assert s.limit == pytest.approx(200 * 0.4)


def test_a_burst_that_drains_within_an_interval_is_not_cut() -> None:
    s = loaded(200)
    samples(s, [0.02] * 11 + [0.001] * 10 + [0.02] * 10)  # late, on time, then late again
    assert s.limit == 1024


def test_another_cut_needs_another_late_interval() -> None:
    s = loaded(200)
    at = samples(s, [0.00625] * 21)
    assert s.limit == pytest.approx(160)
    at = samples(s, [0.00625] * 9, start=at)  # late again, for 90 ms after the cut
    assert s.limit == pytest.approx(160)
    samples(s, [0.00625], start=at)  # the joins admitted before it still in flight: cut again
    assert s.limit == pytest.approx(128)


def test_the_cut_is_taken_from_the_intervals_mean_joins_in_flight() -> None:
    s = loaded(200)
    at = samples(s, [0.00625] * 16)  # the first interval, and half of the second, at 200 in flight
    for _ in range(100):
        s.done()
    samples(s, [0.00625] * 5, start=at)  # its other half at 100
    assert s.limit == pytest.approx(150 * 0.8)


def queued_at(s: LoadShedder, count: int, of: int, start: float) -> float:
    """An interval's ``of`` samples 20 ms late, the first ``count`` of them with one join
    more in flight than the floor (as ``s`` has), the others at the floor."""
    for i in range(of):
        if i == count:
            s.done()
        s.observe(0.02, start + i * PERIOD)
    return start + of * PERIOD


@pytest.mark.parametrize(("queued", "cut"), [(6, True), (5, False)])
def test_a_queue_worth_shedding_stands_at_more_than_half_of_an_intervals_samples(
    queued: int, cut: bool
) -> None:
    s = loaded(MIN_LIMIT + 1)
    at = queued_at(s, 6, 11, start=1.0)  # the first interval: 6 of its 11 samples over the floor
    assert s.admit() is None  # one over the floor again
    queued_at(s, queued, 10, start=at)
    assert (s.limit < 1024) is cut


def test_the_cut_is_judged_by_the_intervals_mean_lag_not_its_smallest_or_last() -> None:
    s = loaded(200)
    samples(s, [0.00625] * 11 + [0.001] * 9 + [0.091])  # the second interval 10 ms late on average
    assert s.limit == pytest.approx(100)


def test_a_cut_is_at_most_to_a_quarter_and_never_below_the_floor() -> None:
    s = loaded(400)
    at = samples(s, [1.0] * 21)  # a second late: cut to a quarter, not to 5 / 1000
    assert s.limit == pytest.approx(100)
    samples(s, [1.0] * 10, start=at)
    assert s.limit == MIN_LIMIT


def test_a_late_loop_with_no_more_joins_in_flight_than_the_floor_is_a_stall_not_a_queue() -> None:
    s = loaded(MIN_LIMIT)
    at = samples(s, [0.5] * 100)  # the machine paused: every sample late for a second
    assert s.limit == 1024
    assert [s.admit() for _ in range(100)] == [None] * 100  # then the backlog arrives at once
    at = samples(s, [0.02] * 20, start=at)  # the stall's last interval, then one late with the backlog
    assert s.limit == 1024  # it gets its interval to drain, as any burst does
    samples(s, [0.02], start=at)
    assert s.limit < 1024


def test_a_second_interval_on_time_in_a_row_with_the_limit_binding_raises_it_by_a_tenth() -> None:
    s = loaded(200)
    at = samples(s, [0.00625] * 21)
    for _ in range(100):
        s.done()
    at = samples(s, [0.001] * 19, start=at)  # 100 in flight >= 160 / 2: the limit binds
    assert s.limit == pytest.approx(160)  # one interval on time, and 90 ms of the next: not yet
    samples(s, [0.001], start=at)
    assert s.limit == pytest.approx(176)


def test_every_interval_on_time_from_the_second_in_a_row_on_raises_the_limit() -> None:
    s = loaded(200)
    at = samples(s, [0.00625] * 21)
    for _ in range(100):
        s.done()
    samples(s, [0.001] * 30, start=at)  # three intervals on time, the limit binding
    assert s.limit == pytest.approx(160 * 1.1 * 1.1)


def test_a_cut_takes_a_tenth_off_at_least() -> None:
    s = loaded(200)
    samples(s, [0.0051] * 21)  # barely late: 5 / 5.1 of the joins would be a 2% cut
    assert s.limit == pytest.approx(200 * 0.9)


def test_late_and_on_time_intervals_in_turn_neither_cut_nor_raise_the_limit() -> None:
    s = loaded(200)
    at = samples(s, [0.00625] * 21)
    for _ in range(100):
        s.done()  # 100 in flight: over the floor, and the limit binds
    samples(s, ([0.001] * 10 + [0.00625] * 10) * 3, start=at)  # on time, late, on time, ...
    assert s.limit == pytest.approx(160)


def test_the_limit_grows_by_one_at_least() -> None:
    s = loaded(8, cap=8)
    at = samples(s, [0.05] * 21)  # cut to the floor, half the cap
    assert s.limit == 4
    samples(s, [0.001] * 20, start=at)  # 8 in flight: binding, on time for two intervals
    assert s.limit == 5


def test_on_time_for_an_interval_with_room_under_the_limit_it_is_back_at_the_cap() -> None:
    s = loaded(200)
    at = samples(s, [0.00625] * 21)
    for _ in range(190):
        s.done()  # 10 in flight, a steady light load: never idle
    at = samples(s, [0.001] * 9, start=at)
    assert s.limit == pytest.approx(160)  # 90 ms: not yet
    samples(s, [0.001], start=at)
    assert s.limit == 1024


def cut_to_160_with(inflight: int) -> tuple[LoadShedder, float]:
    s = loaded(200)
    at = samples(s, [0.00625] * 21)
    for _ in range(200 - inflight):
        s.done()
    return s, at


def test_a_late_interval_even_with_few_joins_in_flight_is_no_recovery() -> None:
    s, at = cut_to_160_with(20)
    at = samples(s, [0.001] + [0.04] * 9, start=at)  # late on average, 20 in flight: no cut, no recovery
    assert s.limit == pytest.approx(160)
    samples(s, [0.001] * 10, start=at)  # then an interval on time with room
    assert s.limit == 1024


def test_a_sample_with_the_limit_binding_keeps_its_interval_from_being_a_recovery() -> None:
    s, at = cut_to_160_with(20)
    at = samples(s, [0.001] * 5, start=at)
    for _ in range(70):
        assert s.admit() is None  # 90 in flight >= 160 / 2: the limit binds
    at = samples(s, [0.001], start=at)
    for _ in range(70):
        s.done()
    samples(s, [0.001] * 4, start=at)  # the interval ends with room again
    assert s.limit == pytest.approx(160)  # not back at the cap


def test_a_small_cap_keeps_room_to_shed_below_it() -> None:
    s = loaded(8, cap=8)
    assert s.min_limit == 4
    samples(s, [0.05] * 21)
    assert s.limit == pytest.approx(4)


def work(seconds: float) -> None:
    """Hold the event loop as a step of a join does, for ``seconds``."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


async def until(condition: Callable[[], object]) -> None:
    await eventually(condition, 5.0, "the shedder's state", interval=PERIOD)


def limit_reported() -> float | None:
    return REGISTRY.get_sample_value("featurestore_join_inflight_limit")


def floor_reported() -> float | None:
    return REGISTRY.get_sample_value("featurestore_join_inflight_floor")


@pytest.mark.parametrize("run", [asyncio.run, uvloop.run], ids=["asyncio", "uvloop"])
def test_watching_a_real_event_loop_cuts_the_limit_while_it_is_blocked_and_restores_it_after(
    run: Callable[[Coroutine[Any, Any, None]], None],
) -> None:
    async def scenario() -> None:
        s = loaded(100)
        watch = asyncio.create_task(s.watch())
        await until(lambda: limit_reported() == 1024 and floor_reported() == MIN_LIMIT)
        for _ in range(20):  # 30 ms of work between yields, for 600 ms: a standing queue
            work(0.03)
            await asyncio.sleep(0)
        assert s.limit < 100
        for _ in range(100):
            s.done()
        await until(lambda: s.limit == 1024 and limit_reported() == 1024)  # on time and idle
        watch.cancel()

    run(scenario())


class Failing(LoadShedder):
    __slots__ = ()

    def observe(self, lag: float, now: float) -> None:
        raise RuntimeError("a bug")


def test_a_sampler_that_fails_logs_it_once_and_opens_the_limit_rather_than_shed_blind(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def scenario() -> None:
        s = Failing(1024, TARGET)
        s.limit = 40
        watch = asyncio.create_task(s.watch())
        await until(lambda: s.limit == 1024 and limit_reported() == 1024 and floor_reported() == math.inf)
        await asyncio.sleep(5 * PERIOD)
        assert not watch.done()  # it goes on sampling the lag
        watch.cancel()

    asyncio.run(scenario())
    assert caplog.text.count("the load shedder failed a sample") == 1


class FailingAfterTheLag(LoadShedder):
    __slots__ = ()

    def observe(self, lag: float, now: float) -> None:
        self.lag = 0.6  # a bug after the lag was taken: the lag must not stay
        self._on_time_samples = 0  # nor the late sample the row cap binds on
        raise RuntimeError("a bug")


def test_a_sampler_that_fails_after_taking_the_lag_sheds_nothing_by_the_deadline_or_the_row_cap_from_then() -> (
    None
):
    async def scenario() -> None:
        s = FailingAfterTheLag(1024, TARGET, max_rows=10)
        watch = asyncio.create_task(s.watch())
        await until(lambda: s.limit == 1024 and limit_reported() == 1024)
        await asyncio.sleep(5 * PERIOD)
        assert s.admit(0.4) is None  # 400 ms left, the frozen 600 ms lag no reason to shed
        assert s.admit_rows(8) is None
        assert s.admit() is None and s.admit_rows(8) is None  # 16 rows > 10: no row cap either
        watch.cancel()

    asyncio.run(scenario())


class FailingReport(LoadShedder):
    __slots__ = ()

    def _report(self, lag: float, sheds_for_lag: bool) -> None:
        if self.limit < self.max_limit:
            raise OSError("the metrics file is gone")


def test_a_sampler_that_ends_by_an_error_leaves_the_limit_and_the_row_cap_open() -> None:
    async def scenario() -> None:
        s = FailingReport(1024, TARGET, max_rows=10)
        assert [s.admit() for _ in range(100)] == [None] * 100
        watch = asyncio.create_task(s.watch())
        for _ in range(40):  # cut, then the next report fails
            work(0.02)
            await asyncio.sleep(0)
        await until(watch.done)
        assert isinstance(watch.exception(), OSError) and s.limit == 1024
        assert s.admit_rows(8) is None and s.admit_rows(8) is None  # late samples before: unbound now

    asyncio.run(scenario())


def lag_reported() -> float | None:
    return REGISTRY.get_sample_value("featurestore_event_loop_lag_seconds")


def test_a_shedder_that_does_not_shed_reports_the_lag_and_no_limit() -> None:
    async def scenario() -> None:
        s = LoadShedder(1024, TARGET, sheds=False)
        assert [s.admit() for _ in range(100)] == [None] * 100
        watch = asyncio.create_task(s.watch())
        await until(lambda: lag_reported() == 0)
        for _ in range(40):  # late past a report of the lag: 25 samples
            work(0.02)
            await asyncio.sleep(0)
        await until(lambda: (lag_reported() or 0) > TARGET)
        assert s.limit == 1024 and limit_reported() == math.inf and floor_reported() == math.inf
        watch.cancel()

    asyncio.run(scenario())


def test_a_shed_request_is_unavailable_over_http_and_resource_exhausted_over_grpc() -> None:
    http, grpc = shed("http", INFLIGHT), shed("grpc", LATENCY)
    assert http.code is Code.UNAVAILABLE and grpc.code is Code.RESOURCE_EXHAUSTED
    assert http.details == [{"reason": "inflight", "retry_after_seconds": 1}]
    assert "overloaded" in grpc.message and grpc.details[0]["reason"] == "latency"


def test_the_timelines_here_sample_ten_times_an_interval() -> None:
    assert round(INTERVAL / PERIOD, 9) == 10


# -- admission by the time left ---------------------------------------------------------


def test_a_join_with_less_time_left_than_the_loops_standing_lag_is_shed_at_admission() -> None:
    s = loaded(0)
    samples(s, [0.05] * 21)  # the loop runs 50 ms late on average, two intervals in a row
    assert s.admit(0.03) == DEADLINE and s.inflight == 0  # 30 ms left: it cannot answer in time
    assert s.admit(0.2) is None and s.inflight == 1
    assert s.admit() is None  # no deadline known: only the limits


def test_a_join_whose_deadline_has_already_passed_is_admitted_to_be_answered_deadline_exceeded() -> None:
    """Not shed as overload (503, come back in a second): its caller gets the 504 /
    DEADLINE_EXCEEDED the join answers for a deadline gone before any store is read."""
    s = loaded(0)
    samples(s, [0.05] * 21)
    assert s.admit(0.0) is None and s.admit(-0.2) is None and s.inflight == 2


def test_one_late_interval_is_a_stall_not_a_standing_lag() -> None:
    s = loaded(0)
    at = samples(s, [0.001] * 11 + [0.3] * 10)  # a pause that just ended
    assert s.admit(0.05) is None
    samples(s, [0.001] * 10, start=at)  # and an interval on time after it
    assert s.admit(0.05) is None


def test_the_standing_lag_is_the_smaller_of_the_last_two_intervals_mean_lags() -> None:
    """Half its samples on time, half 40 ms late: what a saturated worker's loop shows
    (the module docstring), its joins each waiting about 20 ms a step."""
    s = loaded(0)
    samples(s, [0.04, 0.0] * 10 + [0.04])
    assert s.lag == pytest.approx(0.02, rel=0.1)
    assert s.admit(0.015) == DEADLINE


def test_the_standing_lag_is_not_the_last_intervals_nor_the_two_intervals_average() -> None:
    s = loaded(0)
    samples(s, [0.02] * 11 + [0.04] * 10)  # intervals 20 then 40 ms late on average
    assert s.lag == pytest.approx(0.02)


def shed_count(api: str, reason: str) -> float:
    metrics.flush()
    return (
        REGISTRY.get_sample_value("featurestore_requests_shed_total", {"api": api, "reason": reason}) or 0.0
    )


async def test_an_http_join_with_less_time_left_than_the_loops_lag_is_shed_for_its_deadline() -> None:
    engine = make_engine()
    shedder = LoadShedder(1024, TARGET)
    api = HttpApi(
        engine,
        PushService(engine),
        lambda: Readiness(True),
        max_body_bytes=10_000,
        deadline_ms=500,
        shedder=shedder,
    )
    body = b'{"entities": {"user_id": [1]}, "features": ["fast:a"]}'
    before = shed_count("http", DEADLINE)
    async with client(api) as http:
        samples(shedder, [0.05] * 21)
        assert (await http.post("/v1/feature/join", content=body)).status_code == 200  # 500 ms left
        r = await http.post("/v1/feature/join", content=body, headers={"x-featurestore-deadline-ms": "20"})
    assert r.status_code == 503 and r.headers["retry-after"] == "1"
    assert r.json()["error"]["details"] == [{"reason": "deadline", "retry_after_seconds": 1}]
    assert shed_count("http", DEADLINE) == before + 1 and shedder.inflight == 0


async def test_a_grpc_join_with_less_time_left_than_the_loops_lag_is_shed_for_its_deadline(
    served: Serve,
) -> None:
    shedder = LoadShedder(1024, TARGET)
    port = await served(make_engine(), shedder=shedder)
    before = shed_count("grpc", DEADLINE)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        join = channel.unary_unary(JOIN_METHOD)
        samples(shedder, [0.05] * 21)
        assert await join(join_message("fast", [1]), timeout=10)  # 500 ms left (the configured deadline)
        samples(shedder, [10.0] * 21, start=2.0)  # the loop 10 s late: no deadline here is that long
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await join(join_message("fast", [1]), timeout=5)
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "(deadline)" in (
        info.value.details() or ""
    )
    assert shed_count("grpc", DEADLINE) == before + 1 and shedder.inflight == 0


# -- the floor ------------------------------------------------------------------------------


def late(s: LoadShedder, clock: CpuClock, cpu: float, completed: int, at: float, n: int = 10) -> float:
    """An interval's ``n`` samples 20 ms late (11 for a shedder's first), over which the
    loop spends ``cpu`` seconds and ``completed`` joins end (as many start: the joins in
    flight stay, unless the limit sheds them)."""
    clock.t += cpu
    for _ in range(completed):
        s.done()
        s.admit()
    return samples(s, [0.02] * n, start=at)


def onset(s: LoadShedder, clock: CpuClock, cpu: float, completed: int) -> float:
    """An overload's first late interval (a shedder's first: 11 samples), whose joins'
    cost is measured at its end."""
    return late(s, clock, cpu, completed, at=1.0, n=11)


def refusing(s: LoadShedder, limit: float = 200.0) -> None:
    """The limit cut to ``limit`` and one join refused at it: the next interval refused."""
    s.limit = limit
    assert s.admit() == LATENCY


def test_costly_joins_lower_the_floor_to_those_that_fit_in_shed_floor_ms_of_cpu() -> None:
    clock = CpuClock()
    s = loaded(200, clock=clock)
    assert s.min_limit == MIN_LIMIT and s.join_cost.seconds == 0.0  # nothing measured yet
    onset(s, clock, 0.1, 20)  # 5 ms of the loop's CPU a join (batch ~1,000)
    assert s.join_cost.seconds == pytest.approx(0.005)
    assert s.min_limit == round(FLOOR_SECONDS / 0.005) == 5


def test_the_floor_is_the_cost_rounded_to_the_nearest_join() -> None:
    clock = CpuClock()
    s = loaded(200, clock=clock)
    onset(s, clock, 0.1, 27)  # 3.7 ms a join: 6.75 joins fit, rounded to 7 (not cut to 6)
    assert s.min_limit == 7


def test_cheap_joins_leave_the_floor_at_shed_min_inflight() -> None:
    clock = CpuClock()
    s = loaded(200, clock=clock)
    onset(s, clock, 0.1, 1000)  # 0.1 ms a join (batch 1): 250 would fit in 25 ms
    assert s.join_cost.seconds == pytest.approx(0.0001) and s.min_limit == MIN_LIMIT


def test_a_measurement_waits_for_eight_joins_done() -> None:
    """A push can make an interval of a lightly loaded loop late and busy: the few joins
    done beside it are not charged with it."""
    clock = CpuClock()
    s = loaded(10, clock=clock)
    at = late(s, clock, 0.065, 7, at=1.0, n=11)  # a 65 ms push, 7 joins done
    assert s.join_cost.seconds == 0.0 and s.min_limit == MIN_LIMIT
    late(s, clock, 0.065, 1, at=at)  # a second saturated interval: 8 joins done over both
    assert s.join_cost.seconds == pytest.approx(0.13 / 8)


def test_a_queue_of_costly_joins_is_cut_below_the_joins_a_count_floor_would_keep() -> None:
    clock = CpuClock()
    s = loaded(60, clock=clock)  # under the floor of 64 joins: a stall, until their cost is known
    at = onset(s, clock, 0.1, 20)
    for _ in range(4):
        at = late(s, clock, 0.1, 20, at=at)
    assert s.limit == s.min_limit == 5  # 60 joins of 5 ms: a 300 ms queue, cut to 25 ms of it


def test_a_queue_is_judged_against_the_floor_measured_at_the_end_of_its_own_interval() -> None:
    clock = CpuClock()
    s = loaded(20, clock=clock)  # 20 joins: under 64, over the 5 their cost will allow
    at = onset(s, clock, 0.1, 20)  # measured at this interval's end, which is judged by it
    assert s.min_limit == 5 and s.limit == 1024  # one late interval of 100 ms of joins: a burst
    late(s, clock, 0.1, 20, at=at)
    assert s.limit == pytest.approx(5)  # both counted as queued over the floor of 5: cut


def test_joins_with_more_than_an_interval_of_cpu_left_are_cut_at_their_first_late_interval() -> None:
    """50 joins of 5 ms have 125 ms of the loop's CPU left (half of each, on average): no
    burst that drains within the next interval, so the cut does not wait for a second
    late one (at batch 1,000 the joins admitted meanwhile were answered up to 620 ms after
    their write)."""
    clock = CpuClock()
    s = loaded(50, clock=clock)
    onset(s, clock, 0.1, 20)  # 5 ms a join, the loop 20 ms late: cut to a quarter
    assert s.limit == pytest.approx(50 * 0.25)


def test_a_late_interval_whose_joins_have_an_interval_of_cpu_left_or_less_is_a_burst() -> None:
    for inflight in (30, 40):  # 75 and 100 ms left at 5 ms a join
        clock = CpuClock()
        s = loaded(inflight, clock=clock)
        onset(s, clock, 0.1, 20)
        assert s.limit == 1024


def test_after_a_cut_at_once_the_next_late_interval_cuts_again() -> None:
    clock = CpuClock()
    s = loaded(50, clock=clock)
    at = onset(s, clock, 0.1, 20)
    assert s.limit == pytest.approx(12.5)
    late(s, clock, 0.1, 20, at=at)  # the queue did not drain: a second late interval
    assert s.limit == s.min_limit == 5  # a quarter of the joins in flight, held at the floor


def test_a_pause_is_not_cut_at_once_whatever_the_cost_known() -> None:
    """A stall of the machine makes the loop late without its thread spending CPU: not
    saturated, so a cost measured in an earlier overload does not turn it into a cut."""
    clock = CpuClock()
    s = loaded(50, clock=clock)
    at = onset(s, clock, 0.1, 20)  # 5 ms a join, cut to 12.5
    s.limit = 1024.0  # (as if recovered, the 50 joins still in flight)
    at = samples(s, [0.0] * 10, start=at)  # an interval on time, the loop's thread idle
    assert s.limit == 1024 and s.join_cost.seconds == pytest.approx(0.005)
    samples(s, [0.4] + [0.0] * 9, start=at)  # a 0.4 s pause, no CPU spent: 40 ms late on average
    assert s.join_cost.seconds == pytest.approx(0.005) and s.limit == 1024


def test_with_no_join_cost_known_a_first_late_interval_is_a_burst_whatever_in_flight() -> None:
    s = loaded(500)
    samples(s, [0.02] * 11)  # (the CPU clock frozen: nothing measured)
    assert s.join_cost.seconds == 0.0 and s.limit == 1024


def test_an_interval_that_refused_requests_never_raises_the_cost() -> None:
    """A refusal's CPU is not a join's: counted in, refusals would lower the floor, and the
    lower floor refuse more."""
    clock = CpuClock()
    s = loaded(200, clock=clock)
    at = onset(s, clock, 0.1, 20)  # 5 ms a join, measured at the onset
    refusing(s)
    late(s, clock, 0.1, 10, at=at)  # which spent the CPU of 20 joins on 10 and the refusals
    assert s.join_cost.seconds == pytest.approx(0.005) and s.min_limit == 5


def test_an_interval_that_refused_requests_teaches_a_cheaper_cost() -> None:
    """The onset's cost reads high; the refusing intervals after it correct it down."""
    clock = CpuClock()
    s = loaded(200, clock=clock)
    at = onset(s, clock, 0.1, 20)  # 5 ms a join
    refusing(s)
    late(s, clock, 0.1, 100, at=at)  # 1 ms a join, refusals' CPU included: an upper bound
    assert s.join_cost.seconds == pytest.approx(0.005 + 0.25 * (0.001 - 0.005))


def test_a_refusing_interval_with_fewer_than_eight_joins_done_teaches_nothing_yet() -> None:
    clock = CpuClock()
    s = loaded(200, clock=clock)
    at = onset(s, clock, 0.1, 10)  # 10 ms a join
    refusing(s)
    at = late(s, clock, 0.06, 7, at=at)  # 8.6 ms a join, refusals included: too few to tell
    assert s.join_cost.seconds == pytest.approx(0.01)
    late(s, clock, 0.051, 5, at=at)  # carried: 0.111 s over 12 joins, an upper bound under 10 ms
    assert s.join_cost.seconds == pytest.approx(0.01 + 0.25 * (0.111 / 12 - 0.01))


def test_joins_too_costly_to_finish_eight_before_the_first_cut_are_measured_while_refusing() -> None:
    """Batch 10,000: ~2 joins an interval. With no cost known, an upper bound is taken."""
    clock = CpuClock()
    s = loaded(16, clock=clock)
    at = 1.0
    for n in (11, 10, 10, 10):
        refusing(s, 10.0)
        at = late(s, clock, 0.1, 2, at=at, n=n)
    assert s.join_cost.seconds == pytest.approx(0.05)  # 0.4 s over 8 joins
    assert s.min_limit == MIN_FLOOR


def test_a_join_shed_for_its_deadline_is_a_refusal_too() -> None:
    clock = CpuClock()
    s = loaded(200, clock=clock)
    at = late(s, clock, 0.1, 20, at=onset(s, clock, 0.1, 20))  # two late: a standing lag
    s.limit = 1024.0  # (room under the limit)
    assert s.admit(remaining=0.001) == DEADLINE  # less time left than the loop's lag
    late(s, clock, 0.1, 10, at=at)  # 10 ms a join: learnt were it no refusal
    assert s.join_cost.seconds == pytest.approx(0.005)


def test_cheaper_joins_raise_the_floor_once_an_interval_refuses_nothing() -> None:
    clock = CpuClock()
    s = loaded(30, clock=clock)  # (30 joins of 5 ms, 75 ms of it left: a burst at the onset)
    at = onset(s, clock, 0.1, 20)  # 5 ms a join: the floor 5
    for _ in range(20):
        at = late(s, clock, 0.1, 1000, at=at)  # then 0.1 ms: a quarter of the way each
    assert s.min_limit == MIN_LIMIT and s.limit >= MIN_LIMIT


def test_the_measured_cost_follows_a_change_of_batch_by_a_quarter_each_late_interval() -> None:
    clock = CpuClock()
    s = loaded(60, clock=clock)
    at = onset(s, clock, 0.1, 1000)  # 0.1 ms a join
    late(s, clock, 0.1, 20, at=at)  # then 5 ms a join
    assert s.join_cost.seconds == pytest.approx(0.0001 + 0.25 * (0.005 - 0.0001))


def test_joins_longer_than_an_interval_are_measured_over_the_late_intervals_they_span() -> None:
    clock = CpuClock()
    s = loaded(16, clock=clock)
    at = onset(s, clock, 0.1, 0)
    at = late(s, clock, 0.1, 0, at=at)
    assert s.join_cost.seconds == 0.0  # no join done yet: carried
    late(s, clock, 0.6, 8, at=at)
    assert s.join_cost.seconds == pytest.approx(0.1)  # 0.8 s over 8 joins
    assert s.min_limit == MIN_FLOOR  # one computing while another waits for its store


def test_an_interval_busy_for_half_of_it_is_saturated_and_less_is_not() -> None:
    for cpu, measured in ((0.051, True), (0.049, False)):
        clock = CpuClock()
        s = loaded(200, clock=clock)
        onset(s, clock, cpu, 10)
        assert (s.join_cost.seconds > 0) is measured, cpu


def test_how_busy_an_interval_was_is_judged_by_its_own_length() -> None:
    clock = CpuClock()
    s = loaded(200, clock=clock)
    at = samples(s, [0.02] * 10)
    clock.t += 0.1  # 100 ms of CPU over an interval of 300 ms (a timer 200 ms late): a third
    for _ in range(10):
        s.done()
        s.admit()
    s.observe(0.2, at + 0.19)
    assert s.join_cost.seconds == 0.0


def test_a_stall_spends_no_cpu_and_completes_nothing_so_it_moves_no_floor() -> None:
    clock = CpuClock()
    s = loaded(200, clock=clock)
    at = onset(s, clock, 0.1, 20)
    assert s.min_limit == 5
    samples(s, [0.5] * 30, start=at)  # the machine paused for 300 ms
    assert s.join_cost.seconds == pytest.approx(0.005) and s.min_limit == 5


def test_an_interval_on_time_drops_the_cpu_carried_for_joins_not_yet_done() -> None:
    clock = CpuClock()
    s = loaded(16, clock=clock)
    at = onset(s, clock, 0.1, 4)  # saturated, 4 joins done: 0.1 s carried
    clock.t += 0.1
    at = samples(s, [0.001] * 10, start=at)  # on time: the carry dropped
    late(s, clock, 0.1, 10, at=at)
    assert s.join_cost.seconds == pytest.approx(0.01)  # not (0.1 + 0.1 + 0.1) / 14


def test_an_idle_loops_cpu_is_no_joins_cost() -> None:
    clock = CpuClock()
    s = loaded(0, clock=clock)
    clock.t += 0.05  # timers, one join done in a second
    s.admit()
    s.done()
    at = samples(s, [0.001] * 101)  # ten intervals on time
    assert s.join_cost.seconds == 0.0 and s.min_limit == MIN_LIMIT
    late(s, clock, 0.1, 20, at=at)  # then saturated: only its CPU counts
    assert s.join_cost.seconds == pytest.approx(0.005)


def test_ten_seconds_without_a_saturated_interval_forget_the_cost() -> None:
    """A worker saturated once by batches of 1,000 may serve batch 1 next: its next
    overload measures its own joins. A stall (late, no CPU) is no saturation."""
    clock = CpuClock()
    s = loaded(200, clock=clock)
    at = onset(s, clock, 0.1, 20)
    assert s.min_limit == 5
    for _ in range(CALM_INTERVALS // 20 - 1):  # a stall every 2 s
        at = samples(s, [0.001] * 190 + [0.5] * 10, start=at)
    at = samples(s, [0.001] * 190, start=at)
    assert s.min_limit == 5  # 9.9 s unsaturated
    samples(s, [0.001] * 10, start=at)
    assert s.min_limit == MIN_LIMIT and s.join_cost.seconds == 0.0


def test_a_saturated_interval_keeps_the_cost_for_ten_seconds_more() -> None:
    clock = CpuClock()
    s = loaded(200, clock=clock)
    at = onset(s, clock, 0.1, 20)
    at = samples(s, [0.001] * 950, start=at)
    s.limit = 300.0  # (room: the next interval refuses nothing)
    at = late(s, clock, 0.1, 20, at=at)  # saturated again at 9.5 s
    samples(s, [0.001] * 950, start=at)
    assert s.min_limit == 5


def test_the_floor_is_at_most_half_the_cap_and_at_least_two_joins_when_measured() -> None:
    clock = CpuClock()
    small = loaded(8, cap=8, clock=clock)
    assert small.min_limit == 4
    onset(small, clock, 0.1, 10_000)  # 10 µs a join
    assert small.min_limit == 4
    clock = CpuClock()
    dear = loaded(8, clock=clock)
    onset(dear, clock, 8.0, 8)  # a second of CPU a join (batch 100,000)
    assert dear.min_limit == MIN_FLOOR


def test_shed_min_inflight_and_shed_floor_ms_set_the_floor() -> None:
    assert (
        LimitsConfig().shed_min_inflight == MIN_LIMIT and LimitsConfig().shed_floor_ms / 1000 == FLOOR_SECONDS
    )
    clocks = {name: CpuClock() for name in ("default", "10 ms", "8 joins")}
    shedders = {
        name: LoadShedder.from_limits(limits, cpu_clock=clocks[name])
        for name, limits in {
            "default": LimitsConfig(),
            "10 ms": LimitsConfig(shed_floor_ms=10),
            "8 joins": LimitsConfig(shed_min_inflight=8),
        }.items()
    }
    for name, s in shedders.items():
        assert [s.admit() for _ in range(40)] == [None] * 40
        at = 1.0
        for n in (11, 10, 10):  # 1 ms a join, measured at the first interval, cut from the second
            clocks[name].t += 0.1
            for _ in range(100):
                s.done()
                s.admit()
            at = samples(s, [0.4] * n, start=at)  # the loop 400 ms late: cut to a quarter of 40
    assert {name: s.min_limit for name, s in shedders.items()} == {"default": 25, "10 ms": 10, "8 joins": 8}
    assert {name: s.limit for name, s in shedders.items()} == {"default": 25, "10 ms": 10, "8 joins": 8}


def test_a_cap_of_one_to_four_joins_keeps_its_floor_under_it() -> None:
    for cap, floor in ((1, 1), (2, 1), (3, 1), (4, 2)):
        clock = CpuClock()
        s = loaded(cap, cap=cap, clock=clock)
        onset(s, clock, 0.8, 8)  # 100 ms a join: MIN_FLOOR would be 2
        assert s.min_limit == floor and s.limit <= cap


def test_the_cost_is_the_event_loop_threads_cpu_by_default() -> None:
    """A scrape's render, the drift monitor and worker 0's consistency checks run in
    threads: they queue nothing on the loop."""
    assert LoadShedder(1024, TARGET).join_cost.clock is time.thread_time
    assert LoadShedder.from_limits(LimitsConfig()).join_cost.clock is time.thread_time


def test_the_cpu_a_worker_spent_before_it_watches_its_loop_is_no_joins_cost() -> None:
    async def scenario() -> None:
        clock = CpuClock()
        s = loaded(200, clock=clock)
        clock.t += 5.0  # starting up: loading data, compiling kernels
        watch = asyncio.create_task(s.watch())
        await asyncio.sleep(0)  # the watch has begun
        onset(s, clock, 0.1, 20)
        assert s.join_cost.seconds == pytest.approx(0.005)
        watch.cancel()

    asyncio.run(scenario())
