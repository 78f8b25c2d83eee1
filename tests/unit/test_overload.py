"""The worker's load shedder: a hard cap on joins in flight, a limit that drops while
joins complete slower than the target and grows back when they are fast."""

from __future__ import annotations

import pytest

from featurestore.errors import Code
from featurestore.overload import INFLIGHT, LATENCY, MIN_LIMIT, LoadShedder, shed


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_requests_beyond_the_hard_cap_are_shed_and_the_next_one_after_a_completion_is_not() -> None:
    s = LoadShedder(3, target_seconds=0.1, clock=Clock())
    assert [s.admit() for _ in range(3)] == [None, None, None]
    assert s.admit() == INFLIGHT
    s.done(0.0)
    assert s.admit() is None and s.inflight == 3


def test_slow_completions_cut_the_limit_once_per_cut_and_fast_ones_raise_it() -> None:
    clock = Clock()
    s = LoadShedder(100, target_seconds=0.1, clock=clock, min_limit=1)
    for _ in range(50):
        assert s.admit() is None
    clock.t = 0.125
    s.done(0.0)  # 50 in flight, slower than the target: a standing queue
    assert s.limit == 50 * 0.8  # 0.1 / 0.125
    s.done(0.0)  # admitted before that cut: the cut has not acted yet, no second one
    assert s.limit == 40 and s.inflight == 48
    assert s.admit() == LATENCY  # 48 in flight >= 40: shed, below the hard cap
    clock.t = 1.0
    s.done(0.8)  # admitted after the cut and still slow: cut again, by 0.1 / 0.2
    assert s.limit == pytest.approx(20)
    clock.t = 2.0
    s.done(1.5)  # far slower than the target: cut by 0.1 / 0.5, but by no more than 0.25
    assert s.limit == pytest.approx(5)
    for _ in range(22):
        s.done(1.95)  # fast again: +1 each while near the limit
    assert s.limit == pytest.approx(5 + 22) and s.inflight == 24
    assert s.admit() is None  # load dropped: admitted at once


def test_a_worker_that_drains_is_back_at_its_cap() -> None:
    clock = Clock()
    s = LoadShedder(100, target_seconds=0.1, clock=clock, min_limit=1)
    for _ in range(10):
        s.admit()
    clock.t = 1.0
    s.done(0.0)
    assert s.limit == 10 * 0.25
    for _ in range(9):
        s.done(0.95)
    assert s.inflight == 0 and s.limit == 100


def test_the_limit_never_drops_below_its_floor() -> None:
    clock = Clock()
    s = LoadShedder(40, target_seconds=0.1, clock=clock)
    s.admit()
    for i in range(20):
        clock.t = i + 1.0
        s.admit()
        s.done(float(i))
    assert s.limit == MIN_LIMIT
    assert [s.admit() for _ in range(MIN_LIMIT - 1)] == [None] * (MIN_LIMIT - 1)
    assert s.admit() == LATENCY


def test_a_shed_request_is_unavailable_over_http_and_resource_exhausted_over_grpc() -> None:
    http, grpc = shed("http", INFLIGHT), shed("grpc", LATENCY)
    assert http.code is Code.UNAVAILABLE and grpc.code is Code.RESOURCE_EXHAUSTED
    assert http.details == [{"reason": "inflight", "retry_after_seconds": 1}]
    assert "overloaded" in grpc.message and grpc.details[0]["reason"] == "latency"
