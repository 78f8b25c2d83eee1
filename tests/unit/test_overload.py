"""The worker's load shedder: a hard cap on joins in flight, and a limit that drops
when a queue stands for an interval (every join slower than the worker's own service
time + the target) and grows back when joins are fast again."""

from __future__ import annotations

import pytest

from featurestore.errors import Code
from featurestore.overload import INFLIGHT, LATENCY, MIN_LIMIT, SERVICE_WINDOW, LoadShedder, shed

SERVICE = 0.002
TARGET = 0.006  # service + target: 8 ms


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def shedder(clock: Clock, cap: int = 100, min_limit: int = 1) -> LoadShedder:
    """A shedder whose service time is SERVICE, learnt before t=0: made at t=-20, it
    ran a join alone in its first window and one in the next."""
    clock.t = -20.0
    s = LoadShedder(cap, target_seconds=TARGET, clock=clock, min_limit=min_limit)
    for at, seconds in ((-20.0, SERVICE), (-9.0, 0.003)):
        assert s.admit(at) is None
        complete(s, clock, at, seconds)
    assert s.service == pytest.approx(SERVICE) and s.limit == cap
    return s


def complete(s: LoadShedder, clock: Clock, start: float, seconds: float) -> None:
    clock.t = start + seconds
    s.done(start)


def admit(s: LoadShedder, at: float, n: int) -> list[float]:
    """n joins started at ``at`` (a microsecond apart, as real start times are)."""
    starts = [at + i * 1e-6 for i in range(n)]
    assert [s.admit(t) for t in starts] == [None] * n
    return starts


def test_requests_beyond_the_hard_cap_are_shed_and_the_next_one_after_a_completion_is_not() -> None:
    s = LoadShedder(3, target_seconds=TARGET, clock=Clock())
    admit(s, 0.0, 3)
    assert s.admit(0.1) == INFLIGHT
    s.done(0.0)
    assert s.admit(0.2) is None and s.inflight == 3


def test_a_queue_that_stands_for_an_interval_cuts_the_limit_to_the_share_that_would_finish_in_time() -> None:
    clock = Clock()
    s = shedder(clock)
    starts = [1.0 + i * 0.003 for i in range(50)]
    for t in starts:
        assert s.admit(t) is None
    for t in starts[:34]:  # each takes 10 ms, 2 ms over service + target; 1.010 .. 1.109
        complete(s, clock, t, 0.010)
    assert s.limit == 100  # not for a whole interval yet: it may be a burst
    complete(s, clock, starts[34], 0.010)  # at 1.112: slow for over 100 ms, a standing queue
    assert s.limit == pytest.approx(16 * 0.8)  # of the 16 in flight, 8 ms / 10 ms
    assert s.inflight == 15 and s.admit(2.0) == LATENCY  # 15 in flight >= 12.8: shed, below the cap


def test_a_burst_that_drains_within_an_interval_is_not_cut() -> None:
    clock = Clock()
    s = shedder(clock)
    starts = admit(s, 1.0, 60)
    for i, t in enumerate(starts[:20]):
        complete(s, clock, t, 0.05 + i * 0.004)  # slow for 76 ms
    complete(s, clock, starts[20], 0.004)  # then one within service + target: it drained
    for i, t in enumerate(starts[21:]):
        complete(s, clock, t, 0.2 + i * 0.002)  # slow again, for 78 ms
    assert s.limit == 100


def test_joins_admitted_before_a_cut_do_not_cut_again() -> None:
    clock = Clock()
    s = shedder(clock)
    starts = admit(s, 1.0, 60)
    complete(s, clock, starts[0], 0.05)
    complete(s, clock, starts[1], 0.15)  # the cut, at 1.15: by 8 / 150, at most to a quarter
    assert s.limit == pytest.approx(59 * 0.25)
    for i, t in enumerate(starts[2:50]):
        complete(s, clock, t, 0.2 + i * 0.01)  # still slow, for 470 ms: admitted before the cut
    assert s.limit == pytest.approx(59 * 0.25)
    later = admit(s, 2.0, 1)[0]  # admitted after the cut (10 in flight)
    complete(s, clock, later, 0.5)
    complete(s, clock, starts[50], 1.7)
    assert s.limit == pytest.approx(59 * 0.25)  # one slow join after the cut: not an interval yet


def test_the_limit_never_drops_below_its_floor_nor_is_cut_with_no_more_than_the_floor_in_flight() -> None:
    clock = Clock()
    s = shedder(clock, min_limit=MIN_LIMIT)
    starts = admit(s, 1.0, 40)
    complete(s, clock, starts[0], 0.3)
    complete(s, clock, starts[1], 0.5)  # 39 in flight: cut to a quarter, but not below 32
    assert s.limit == MIN_LIMIT
    s2 = shedder(clock, min_limit=MIN_LIMIT)
    stalled = admit(s2, 3.0, MIN_LIMIT)  # a stall of the machine: every join slow, no queue
    for i, t in enumerate(stalled[:-1]):
        complete(s2, clock, t, 0.3 + i * 0.01)
    assert s2.limit == 100
    assert s.inflight == 38 and s.admit(5.0) == LATENCY


def test_fast_completions_near_the_limit_raise_it_and_a_worker_that_drains_is_back_at_its_cap() -> None:
    clock = Clock()
    s = shedder(clock)
    starts = [1.0, 1.000001] + [1.5 + k * 0.001 for k in range(38)]  # all admitted at once
    for t in starts:
        assert s.admit(t) is None
    complete(s, clock, starts[0], 0.05)
    complete(s, clock, starts[1], 0.4)  # cut: 39 in flight x 0.25
    assert s.limit == pytest.approx(9.75)
    for t in starts[2:10]:
        complete(s, clock, t, 0.401)  # slow: no raise
    assert s.limit == pytest.approx(9.75)
    for t in starts[10:25]:
        complete(s, clock, t, 0.001)  # fast while 30..16 are in flight: +1/limit each
    assert s.limit == pytest.approx(11.19, abs=0.01) and s.inflight == 15  # 15 at a limit of ~10
    for t in starts[25:]:
        complete(s, clock, t, 0.3)
    assert s.inflight == 0 and s.limit < 12  # drained, but the last join had queued
    alone(s, clock, 3.0, 0.001)
    assert s.limit == 100  # drained with no queue: back at the cap


def alone(s: LoadShedder, clock: Clock, at: float, seconds: float) -> None:
    assert s.admit(at) is None and s.inflight == 1
    complete(s, clock, at, seconds)


def crowded(s: LoadShedder, clock: Clock, at: float, seconds: float) -> None:
    """Two joins, the second admitted while the first runs: neither ran alone."""
    first, second = admit(s, at, 2)
    complete(s, clock, second, seconds)
    complete(s, clock, first, seconds)


def test_the_service_time_is_the_fastest_join_that_ran_alone_since_the_last_window() -> None:
    clock = Clock()
    s = shedder(clock)  # 2 ms; its window ended at t=-8.997
    crowded(s, clock, 1.0, 0.007)
    assert s.service == pytest.approx(SERVICE)  # no join ran alone since: not updated
    alone(s, clock, 2.0, 0.006)
    assert s.service == pytest.approx(0.006)  # a window is over: the fastest alone since
    alone(s, clock, 5.0, 0.009)
    assert s.service == pytest.approx(0.006)  # within the window that began at 2.006
    alone(s, clock, 13.0, 0.010)
    assert s.service == pytest.approx(0.009)  # the store got slower: seen as such
    admit(s, 30.0, 1)  # alone, and still in flight: the joins after it are not alone
    for i in range(3):
        complete(s, clock, admit(s, 31.0 + i * SERVICE_WINDOW, 1)[0], 0.012)
    assert s.service == pytest.approx(0.009)  # windows with no join alone keep the figure


def test_a_worker_knows_no_service_time_until_its_first_window_ends() -> None:
    clock = Clock()
    s = LoadShedder(100, target_seconds=TARGET, clock=clock)
    alone(s, clock, 0.0, 0.080)  # the first join opens connections
    alone(s, clock, 1.0, 0.002)
    assert s.service == 0
    alone(s, clock, SERVICE_WINDOW, 0.003)
    assert s.service == pytest.approx(0.002)


def test_a_first_join_that_opened_connections_is_no_service_time_if_other_joins_were_faster() -> None:
    clock = Clock()
    s = LoadShedder(100, target_seconds=TARGET, clock=clock)
    alone(s, clock, 0.0, 0.080)  # then overload: no join runs alone again
    for i in range(20):
        crowded(s, clock, 1.0 + i, 0.020)
    assert s.service == pytest.approx(0.020)


def test_a_store_whose_joins_are_slow_but_not_queued_is_not_shed() -> None:
    clock = Clock()
    s = LoadShedder(1000, target_seconds=TARGET, clock=clock)
    alone(s, clock, 0.0, 0.030)  # ClickHouse-like: 30 ms alone
    alone(s, clock, SERVICE_WINDOW, 0.030)
    assert s.service == pytest.approx(0.030)
    starts = [11.0 + i * 0.0002 for i in range(400)]  # 200 in flight at a time, each 34 ms
    for i, t in enumerate(starts):
        assert s.admit(t) is None
        if i >= 200:
            complete(s, clock, starts[i - 200], 0.034)
    assert s.limit == 1000


def test_a_shed_request_is_unavailable_over_http_and_resource_exhausted_over_grpc() -> None:
    http, grpc = shed("http", INFLIGHT), shed("grpc", LATENCY)
    assert http.code is Code.UNAVAILABLE and grpc.code is Code.RESOURCE_EXHAUSTED
    assert http.details == [{"reason": "inflight", "retry_after_seconds": 1}]
    assert "overloaded" in grpc.message and grpc.details[0]["reason"] == "latency"
