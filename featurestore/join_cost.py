"""What a join costs a worker in CPU, measured while a queue stands in it: the load
shedder lowers its floor to the joins that fit in ``limits.shed_floor_ms`` of it
(featurestore/overload.py).

The measure is the event loop thread's CPU time over the joins the worker completed,
across consecutive saturated intervals (a join may take longer than one): the loop's CPU
is what its queue waits for; a thread's work (a scrape's render, the drift monitor, the
consistency checks of worker 0) is not, but for the GIL it holds. Saturated: the interval
was late and the loop's thread busy for at least ``BUSY`` of it. A measurement needs
``STANDING`` saturated intervals in a row, as a cut needs late ones: one interval made late
by a push or a scrape on a lightly loaded loop is not a queue of joins, and a stall spends
no CPU. An interval that refused requests counts their CPU too, so its cost is an upper
bound on a join's: it is taken only when below the cost known (joins got cheaper), never to
raise it (refusals would otherwise lower the floor, and the lower floor refuse more). So
the cost is measured as an overload begins, at its second late interval, before any cut,
and follows cheaper joins while the shedder refuses (not dearer ones: a sustained overload
keeps the cost of its onset). The shedder forgets it after 10 s on time
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
STANDING: Final = 2  # saturated intervals in a row before the first measurement of a run


class JoinCost:
    """One per worker, told of each of the shedder's intervals. Event loop only."""

    __slots__ = ("_at", "_finished", "_run", "_spent", "clock", "seconds")

    def __init__(self, cpu_clock: Callable[[], float]) -> None:
        """``cpu_clock``: CPU seconds of the event loop's thread, read on it
        (``time.thread_time``; the shedder's default)."""
        self.clock = cpu_clock
        self._at = cpu_clock()  # the CPU clock at the last interval's end
        self._spent, self._finished, self._run = 0.0, 0, 0  # the run of saturated intervals
        self.seconds = 0.0  # CPU seconds a join, smoothed (0.0: not measured)

    def restart(self) -> None:
        """Measure from now on (the CPU spent before, starting up, is no join's)."""
        self._at = self.clock()
        self._spent, self._finished, self._run = 0.0, 0, 0

    def forget(self) -> None:
        """Not measured any more (a calm worker's next overload may be of other joins)."""
        self.seconds = 0.0

    def interval(self, late: bool, seconds: float, completed: int, refused: int) -> bool:
        """An interval of ``seconds`` ended, ``late`` or not, in which ``completed`` joins
        ended and ``refused`` requests were shed. True when it measured the cost anew."""
        cpu = self.clock()
        spent, self._at = cpu - self._at, cpu
        if not late or spent < BUSY * seconds:
            self._spent, self._finished, self._run = 0.0, 0, 0
            return False
        if refused:  # an upper bound: only a cheaper join is learnt from it
            self._spent, self._finished, self._run = 0.0, 0, 0
            if completed and 0.0 < spent / completed < self.seconds:
                self._learn(spent / completed)
                return True
            return False
        self._run += 1
        self._spent += spent
        self._finished += completed
        if self._run < STANDING or self._finished == 0:
            return False  # one late interval is no queue; a join not done yet is carried
        cost = self._spent / self._finished
        self._spent, self._finished = 0.0, 0
        self._learn(cost)
        return True

    def _learn(self, cost: float) -> None:
        self.seconds = cost if self.seconds == 0.0 else self.seconds + COST_WEIGHT * (cost - self.seconds)
