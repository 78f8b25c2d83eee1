"""What a join costs a worker in CPU, measured while the worker is saturated: the load
shedder lowers its floor to the joins that fit in ``limits.shed_floor_ms`` of it
(featurestore/overload.py).

The measure is the event loop thread's CPU time over the joins the worker completed,
across consecutive saturated intervals (a join may take longer than one): the loop's CPU
is what its queue waits for; a thread's work (a scrape's render, the drift monitor, the
consistency checks of worker 0) is not, but for the GIL it holds. Saturated: the
interval was late, the loop's thread busy for at least ``BUSY`` of it, and nothing refused.
A scrape or a push that makes a lightly loaded loop late is not a join's cost; a stall
spends no CPU and completes nothing; a refusal's CPU is not a join's either (counted in,
refusals would lower the floor and the lower floor refuse more). So the cost is
measured as an overload begins, before the shedder cuts its limit, and again in any
saturated interval that refuses nothing.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Final

# Each measurement moves the cost a quarter of the way: a change of batch sizes moves it
# within a few saturated intervals; the first measurement is taken as it is.
COST_WEIGHT: Final = 0.25
# An interval is saturated when the loop's thread spent at least this share of it on CPU:
# a worker past its saturation rate on this 2-core VM, sharing it with the other worker,
# Redis and the load, gets ~0.7 of a core.
BUSY: Final = 0.5


class JoinCost:
    """One per worker, told of each of the shedder's intervals. Event loop only."""

    __slots__ = ("_at", "_clock", "_finished", "_spent", "seconds")

    def __init__(self, cpu_clock: Callable[[], float] = time.thread_time) -> None:
        """``cpu_clock``: the calling thread's CPU seconds, read on the event loop's thread."""
        self._clock = cpu_clock
        self._at = cpu_clock()  # the CPU clock at the last interval's end
        self._spent, self._finished = 0.0, 0  # carried over saturated intervals, no join done yet
        self.seconds = 0.0  # CPU seconds a join, smoothed (0.0: not measured yet)

    def restart(self) -> None:
        """Measure from now on (the CPU spent before, starting up, is no join's)."""
        self._at = self._clock()
        self._spent, self._finished = 0.0, 0

    def interval(self, late: bool, seconds: float, completed: int, refused: int) -> bool:
        """An interval of ``seconds`` ended, ``late`` or not, in which ``completed`` joins
        ended and ``refused`` requests were shed. True when it measured the cost anew."""
        cpu = self._clock()
        spent, self._at = cpu - self._at, cpu
        if not late or refused or spent < BUSY * seconds:
            self._spent, self._finished = 0.0, 0
            return False
        self._spent += spent
        self._finished += completed
        if self._finished == 0:
            return False  # no join done yet: carried to the next saturated interval
        cost = self._spent / self._finished
        self._spent, self._finished = 0.0, 0
        self.seconds = cost if self.seconds == 0.0 else self.seconds + COST_WEIGHT * (cost - self.seconds)
        return True
