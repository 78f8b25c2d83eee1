"""Rate-limited repeated log lines (``featurestore/logs.py``), on an injected clock."""

from __future__ import annotations

import logging

import pytest

from featurestore import logs
from featurestore.logs import RepeatLimitedLog


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def limited(clock: Clock) -> RepeatLimitedLog:
    return RepeatLimitedLog(logging.getLogger("test.logs"), 10.0, clock=clock)


def lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    out = [r.getMessage() for r in caplog.records if r.name == "test.logs"]
    caplog.clear()
    return out


def test_the_first_occurrence_is_logged_at_once_and_repeats_are_summed_up_once_per_interval(
    limited: RepeatLimitedLog, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    limited.log("k", "view %s read failed: %s", "v", "down")
    assert lines(caplog) == ["view v read failed: down"]
    for _ in range(99):
        clock.t += 0.05
        limited.log("k", "view %s read failed: %s", "v", "down")
    assert lines(caplog) == []  # 4.95 s in: all counted, none written
    clock.t += 6
    limited.log("k", "view %s read failed: %s", "v", "still down")
    assert lines(caplog) == [
        "view v read failed: still down [100 occurrences in the 11 s since the last such line]"
    ]
    clock.t += 1
    limited.log("k", "view %s read failed: %s", "v", "still down")
    assert lines(caplog) == []  # a new interval began with the summary


def test_kinds_are_limited_independently(
    limited: RepeatLimitedLog, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    for view in ("a", "b", "a", "b", "c"):
        limited.log(view, "view %s failed", view)
    assert lines(caplog) == ["view a failed", "view b failed", "view c failed"]


def test_flush_writes_the_count_of_an_outage_that_went_quiet_and_then_starts_afresh(
    limited: RepeatLimitedLog, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    for _ in range(5):
        limited.log("k", "store %s down", "s")
    limited.log("once", "a single failure")
    assert lines(caplog) == ["store s down", "a single failure"]
    clock.t += 5
    limited.flush()
    assert lines(caplog) == []  # the interval has not passed yet
    clock.t += 5
    logs.flush()  # what the runtime's log-summaries task calls
    assert lines(caplog) == ["store s down [4 occurrences in the 10 s since the last such line]"]
    clock.t += 1
    limited.log("k", "store %s down", "s")  # a new outage: logged at once
    assert lines(caplog) == ["store s down"]


def test_a_quiet_kind_is_logged_at_once_after_its_interval_without_a_summary(
    limited: RepeatLimitedLog, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    limited.log("k", "failed")
    clock.t += 30
    limited.log("k", "failed")
    assert lines(caplog) == ["failed", "failed"]
