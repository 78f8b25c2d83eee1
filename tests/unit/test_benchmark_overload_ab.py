"""benchmarks.overload_ab's table: one row per overload phase, and per tree the rounds
past the deadline + 10 ms."""

from __future__ import annotations

from typing import Any

from benchmarks.overload_ab import render


def phase(p999: float | None, answered: int = 100, limit: float | None = 8.0) -> dict[str, Any]:
    return {
        "answered": answered, "shed": 50, "p50_ms": 50.0, "p99_ms": 200.0, "p999_ms": p999,
        "served_p999_ms": p999, "limit_median": limit,
    }  # fmt: skip


def test_each_tree_is_summed_up_by_its_median_and_worst_tail_and_the_rounds_past_510_ms() -> None:
    rows = [
        (1, "old", phase(555.4)), (1, "new", phase(282.9)),
        (2, "new", phase(468.3)), (2, "old", phase(510.0)),
        (3, "old", phase(302.8)), (3, "new", phase(575.9, answered=7)),
    ]  # fmt: skip
    out = render(rows)
    assert out[2] == "| 1 | old | 100 | 50 | 50.0 / 200.0 / 555.4 | 555.4 | 8 |"
    assert "* old: p99.9 median 510.0 ms, worst 555.4; 1 of 3 rounds past 510 ms; 300 answered" in out
    assert "* new: p99.9 median 468.3 ms, worst 575.9; 1 of 3 rounds past 510 ms; 207 answered" in out


def test_a_round_with_nothing_answered_is_shown_without_a_figure_and_counted_as_past() -> None:
    out = render([(1, "old", phase(None, answered=0, limit=None)), (2, "old", phase(300.0))])
    assert out[2] == "| 1 | old | 0 | 50 | 50.0 / 200.0 / - | - | - |"
    assert (
        "* old: p99.9 median 300.0 ms, worst 300.0; 1 of 2 rounds past 510 ms (1 with nothing answered); "
        "100 answered" in out
    )
