"""A cap on the entity rows a worker joins at once (``limits.shed_max_rows``): the
shedder's bound on work in flight while it cannot know what a join costs.

The load shedder (overload.py) bounds joins by count, and learns what they cost only
once a worker is saturated: at an overload's onset it admits a count of joins whatever
their size. At batch 1,000 (~6 ms of a worker's loop CPU a join) that count is a queue:
every run missed the 510 ms p99.9 of issue 16's requirement 5, the tail being joins
admitted in the onset's first ~0.5 s (benchmarks/RESULTS.md, "The batch-1,000 overload
tail"). Rows are known as soon as the request is decoded, before any store is read, and
a join's work grows with them: the cap refuses a join whose rows would take those in
flight past it.

Why 16,384: ~16 joins of batch 1,000, ~100 ms of a worker's loop CPU on the 2-core host
of the benchmarks; 2.6x fewer rows than a batch-100 worker holds under 256 callers
(128 connections of 100 rows), so the cap is not what sheds batch 100 or smaller. A
batch-1,000 A/B at twice the saturation rate (a cap on request bytes standing in for
rows: every request the same size), six rounds each: p99.9 200-249 ms against
534-593 without it (2026-12-07 05:00, ``benchmarks.overload_ab``; RESULTS.md has the
run with this code). What it costs: joins that together hold more rows than the cap are
refused even when the loop keeps up (two joins of 10,000 rows, ~60 ms of CPU each, one
after the other), and their callers are told to come back after Retry-After.

A join is never refused for its own size: one with nothing else in flight is admitted
whatever its rows (``limits.max_rows`` bounds those), and one over ``limits.max_rows``
is not counted (the join refuses it, 413 / RESOURCE_EXHAUSTED, before reading anything).
"""

from __future__ import annotations

from collections.abc import Mapping, Sized
from typing import Final

ROWS: Final = "rows"  # the shed reason (featurestore_requests_shed_total{reason})
MAX_ROWS: Final = 16_384  # the default of limits.shed_max_rows (module docstring)


class RowCap:
    """Entity rows of the joins in flight in one worker, and its cap. Event loop only."""

    __slots__ = ("cap", "rows")

    def __init__(self, cap: float = MAX_ROWS) -> None:
        """``cap``: math.inf for none (shedding off)."""
        self.cap = cap
        self.rows = 0

    def take(self, rows: int) -> bool:
        """Count ``rows`` in, unless the joins in flight would then hold more than the cap."""
        held = self.rows
        if held and held + rows > self.cap:
            return False
        self.rows = held + rows
        return True

    def give(self, rows: int) -> None:
        """A join counted in with ``take`` ended."""
        self.rows -= rows


def entity_rows(entities: Mapping[str, Sized], max_rows: int) -> int:
    """The rows a decoded join asks for, as its first key column counts them (the join
    checks that the others agree); 0 for more than ``max_rows``, which the join refuses
    (413) before reading anything: that is no load to shed for."""
    rows = len(next(iter(entities.values()), ()))
    return 0 if rows > max_rows else rows
