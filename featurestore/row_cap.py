"""A cap on the entity rows a worker joins at once (``limits.shed_max_rows``): the
shedder's bound on work in flight while it cannot know what a join costs.

The load shedder (overload.py) bounds joins by count, and learns what they cost only
once a worker is saturated: at an overload's onset it admits a count of joins whatever
their size. At batch 1,000 (~6 ms of a worker's loop CPU a join) that count is a queue:
most runs at twice the saturation rate missed the 510 ms p99.9 of issue 16's requirement
5 (met at two of five on 2026-12-06; 2-6 of 6 rounds past it in each A/B at a true 2x), the tail
being joins admitted in the onset's first ~0.5 s (benchmarks/RESULTS.md, "The batch-1,000
overload tail"). Rows are known as soon as the request is decoded, before any store is
read, and a join's work grows with them: a join is shed when its rows would take those of
the joins in flight past the cap, while the worker's event loop was late (past
``limits.shed_target_ms``) at a sample of the last interval (overload.ROW_CAP_SAMPLES).
Joins waiting on a slow store with the loop idle are not this worker's queue: they are
not shed for (the deadline ends them), though their rows count once a late sample (a
stall of the loop, a collection) binds the cap for an interval (docs/api.md).

Why 20,000: two joins of ``limits.max_rows`` (10,000) may compute at once, the first
making the loop late on its own (~60 ms of CPU); ~20 joins of batch 1,000, ~120 ms of a
worker's loop CPU on the 2-core host of the benchmarks. A batch-100 worker holds at most
12,800 under 256 HTTP callers spread evenly over 2 workers (128 connections of 100 rows),
so there it is not the cap that sheds; with fewer workers, an uneven spread or gRPC (whose
calls no connection count bounds) it binds from 201 joins of batch 100 a worker, ~90 ms
of CPU. Measured at batch 1,000, twice the saturation rate, six interleaved rounds each
(``benchmarks.overload_ab``; benchmarks/results/experiments.md, "A cap on the rows of the
joins in flight", has every run): at 16,384 rows with this rule, p99.9 153-209 ms against
488-741 without the cap (4 of 6 rounds past 510), 11% fewer joins answered (2026-12-07
05:21-05:28); at 20,000, 182-275 ms against 4 of 6 rounds past 510 without, 3% fewer
answered (05:45-05:51). What it costs: joins that together hold
more rows than the cap are refused while the loop runs late, and their callers come back
after Retry-After.

A join is never refused for its own size: one with nothing else in flight is admitted
whatever its rows (``limits.max_rows`` bounds those), and one over ``limits.max_rows``
is not counted (the join refuses it, 413 / RESOURCE_EXHAUSTED, before reading anything).
"""

from __future__ import annotations

from collections.abc import Mapping, Sized
from typing import Final

ROWS: Final = "rows"  # the shed reason (featurestore_requests_shed_total{reason})
MAX_ROWS: Final = 20_000  # the default of limits.shed_max_rows (module docstring)


class RowCap:
    """Entity rows of the joins in flight in one worker, and its cap. Event loop only."""

    __slots__ = ("cap", "rows")

    def __init__(self, cap: float = MAX_ROWS) -> None:
        """``cap``: math.inf for none (shedding off)."""
        self.cap = cap
        self.rows = 0

    def take(self, rows: int, bound: bool = True) -> bool:
        """Count ``rows`` in, unless ``bound`` and the joins in flight would then hold more
        than the cap (a join of no rows is always taken)."""
        held = self.rows
        if bound and rows and held and held + rows > self.cap:
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
