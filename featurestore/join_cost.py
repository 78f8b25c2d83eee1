"""What a join costs a worker in CPU, measured while the worker is saturated: the load
shedder lowers its floor to the joins that fit in ``limits.shed_floor_ms`` of it
(featurestore/overload.py).

The measure is the event loop thread's CPU time over the joins the worker completed,
across consecutive saturated intervals until ``MIN_JOINS`` are done (a join may take
longer than an interval): the loop's CPU is what its queue waits for; a thread's work (a
scrape's render, the drift monitor, the consistency checks of worker 0) is not, but for
the GIL it holds. Saturated: the interval was late and the loop's thread busy for at least
``BUSY`` of it; a stall spends no CPU. So an overload's cost is measured at its first
saturated interval with ``MIN_JOINS`` done (its first late one, or later on a loud machine:
the third in a trace of 2026-12-07), before the shedder's first cut (at the next late
interval, or at that one when its joins have more than an interval of CPU left:
overload.LEFT), and measured high (not traced;
2026-12-06 17:00, when nothing refined it: ~1.7 ms of the loop's CPU a join of batch 100,
the floor 15 for the whole overload; 17:18, with refusing intervals learnt from as below,
the floor 56 at its median; benchmarks/RESULTS.md, "Deadlines under overload"). A
measurement that spans an interval that refused requests counts their CPU too, so its cost
is an upper bound on a join's: it is learnt only when below the cost known (or when none
is: joins too costly to finish 8 before the first cut), and never raises it (counted in as
it comes, refusals would lower the floor, and the lower floor refuse more). Its bias is
downward (a join's CPU spans intervals, and only the lower of the noisy readings are
taken): the floor drifts up, toward the count. It corrected the onset at batch 100, not at
1,000 at 2026-12-06 17:14 (the floor 4, ~6 ms a join, against 7-8 before; 6-8 in the runs
of 2026-12-07): a refused batch-1,000 request costs the read and decoding of its body too,
most likely (not traced).
What it cannot tell from a join is other work on the loop: a push that makes a lightly
loaded loop late and busy is charged to the few joins done beside it (``MIN_JOINS`` keeps
out the fewest). The shedder forgets the cost after 10 s without a saturated interval
(overload.CALM_INTERVALS): the next overload's joins may be others.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

# Each measurement moves the cost a quarter of the way: a change of batch sizes moves it
# within a few saturated intervals; the first measurement is taken as it is.
COST_WEIGHT: Final = 0.25
# An interval is saturated when the loop's thread spent at least this share of it on CPU:
# a worker past its saturation rate on this 2-core VM, sharing it with the other worker,
# Redis and the load, gets ~0.7 of a core.
BUSY: Final = 0.5
# Joins done before a measurement is taken (carried over saturated intervals): a batch-1,000
# worker past saturation completes ~18 an interval (369 QPS over 2 workers), batch 10,000 ~2.
MIN_JOINS: Final = 8


class JoinCost:
    """One per worker, told of each of the shedder's intervals. Event loop only."""

    __slots__ = ("_at", "_bound", "_finished", "_spent", "clock", "saturated", "seconds")

    def __init__(self, cpu_clock: Callable[[], float]) -> None:
        """``cpu_clock``: CPU seconds of the event loop's thread, read on it
        (``time.thread_time``; the shedder's default)."""
        self.clock = cpu_clock
        self._at = cpu_clock()  # the CPU clock at the last interval's end
        self._spent, self._finished, self._bound = 0.0, 0, False  # carried over saturated intervals
        self.seconds = 0.0  # CPU seconds a join, smoothed (0.0: not measured)
        self.saturated = False  # the last interval was

    def restart(self) -> None:
        """Measure from now on (the CPU spent before, starting up, is no join's)."""
        self._at = self.clock()
        self._spent, self._finished, self._bound = 0.0, 0, False

    def forget(self) -> None:
        """Not measured any more (a calm worker's next overload may be of other joins)."""
        self.seconds = 0.0

    def interval(self, late: bool, seconds: float, completed: int, refused: int) -> bool:
        """An interval of ``seconds`` ended, ``late`` or not, in which ``completed`` joins
        ended and ``refused`` requests were shed. True when it measured the cost anew."""
        cpu = self.clock()
        spent, self._at = cpu - self._at, cpu
        self.saturated = late and spent >= BUSY * seconds
        if not self.saturated:
            self._spent, self._finished, self._bound = 0.0, 0, False
            return False
        self._spent += spent
        self._finished += completed
        self._bound = self._bound or refused > 0  # the refusals' CPU is in it: an upper bound
        if self._finished < MIN_JOINS:
            return False  # too few joins done yet: carried to the next saturated interval
        cost, bound = self._spent / self._finished, self._bound
        self._spent, self._finished, self._bound = 0.0, 0, False
        if bound and 0.0 < self.seconds <= cost:
            return False  # an upper bound no lower than the cost known teaches nothing
        self._learn(cost)
        return True

    def _learn(self, cost: float) -> None:
        self.seconds = cost if self.seconds == 0.0 else self.seconds + COST_WEIGHT * (cost - self.seconds)
