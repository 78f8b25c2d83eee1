"""Request deadlines without a loop timer per request.

``asyncio.timeout`` arms a loop timer when entered and cancels it on exit: 3.6 µs a
read on uvloop against 1.6 µs here, and 1.6% of a join's CPU at batch 1 in the serving
path (2.1% at batch 100; ``python -m benchmarks.deadlines``, benchmarks/RESULTS.md,
2026-12-05; 1.4% / 1.1% on 2026-12-02).
Almost every read finishes long before its deadline, so that timer is armed and
cancelled for nothing.

Here a guard files itself under its deadline's tick (``tick`` seconds, rounded down)
and takes itself out on exit: a dict and a set operation. One loop timer serves every
guard of the loop, armed for the earliest deadline it knows of; it is re-armed only
when a guard comes with an earlier one (never in steady traffic, where each deadline
is later than the last) or when it fires. Firing, it cancels every task whose deadline
has come, as ``asyncio.timeout`` does: the guard turns that ``CancelledError`` into
``TimeoutError`` on exit, and a cancellation from elsewhere (the client went away)
passes through. If the guard it was armed for has left, it finds nothing and arms for
the earliest deadline still held.

When: as ``asyncio.timeout`` on uvloop, whose timers count whole milliseconds (a delay
is rounded to the nearest one): a task is cancelled from ``EARLY_SECONDS`` before its
deadline to the loop's latency after it. Cancelling what is due within half a
millisecond is also what keeps a timer that fired early from re-arming for a delay
uvloop would round to zero, again and again, until the deadline comes.

One ``Deadlines`` per event loop, used from that loop only (a guard's enter and exit
run on it).

How much of a request's time the engine may spend (``engine_budget``): its deadline,
less a margin kept for encoding and sending the answer, so a store that never answers
yields the partial answer by the deadline rather than just after it (the caller, whose
own timeout is that deadline, would have given up on it by then).
"""

from __future__ import annotations

import asyncio
import heapq
import math
import time
from types import TracebackType

TICK_SECONDS = 0.001
EARLY_SECONDS = 0.0005

# The margin kept for the answer: a share of the time left, at least a floor, never more
# than half of it, so a short deadline still gets a read. With none (before 2026-12-06 08:14,
# HTTP and the configured deadline) joins whose store froze ended 501-510 ms into a 500 ms
# deadline, client-side (``python -m benchmarks.store_faults``): cancelling the reads at the
# deadline left encoding, writing and the loop's lag after it, 1.5 ms at p50 and 10 ms
# once on a loaded VM.
SEND_MARGIN_SHARE = 0.1
SEND_MARGIN_MIN_SECONDS = 0.002


def engine_budget(seconds_left: float) -> float:
    """Of a request's ``seconds_left`` until its deadline, what its reads and writes may
    spend; <= 0 when nothing is left (the engine then answers DEADLINE_EXCEEDED)."""
    keep = min(max(SEND_MARGIN_MIN_SECONDS, seconds_left * SEND_MARGIN_SHARE), seconds_left / 2)
    return seconds_left - keep


class Deadlines:
    __slots__ = ("_buckets", "_heap", "_in_heap", "_loop", "_per_second", "_timer", "_timer_at", "tick")

    def __init__(self, tick: float = TICK_SECONDS) -> None:
        self.tick = tick
        self._per_second = 1 / tick
        self._buckets: dict[int, set[Guard]] = {}  # tick -> guards due within it
        self._heap: list[int] = []  # ticks that had a bucket, earliest first (some emptied since)
        self._in_heap: set[int] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = math.inf  # the deadline the timer is armed for
        self._loop: asyncio.AbstractEventLoop | None = None

    def guard(self, deadline: float) -> Guard:
        """A context manager that cancels the current task at ``deadline`` (a
        ``time.monotonic()`` instant) and raises ``TimeoutError`` from it."""
        return Guard(self, deadline)

    def pending(self) -> int:
        """Guards entered and not yet left or expired."""
        return sum(len(b) for b in self._buckets.values())

    def _bucket(self, key: int) -> set[Guard]:
        bucket = self._buckets[key] = set()
        if key not in self._in_heap:
            self._in_heap.add(key)
            heapq.heappush(self._heap, key)
        return bucket

    def _arm(self, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        assert self._loop is not None
        self._timer = self._loop.call_later(max(0.0, when - time.monotonic()), self._fire)
        self._timer_at = when

    def _fire(self) -> None:
        self._timer, self._timer_at = None, math.inf
        now = time.monotonic() + EARLY_SECONDS
        last = int(now * self._per_second)  # ticks up to this one may hold guards due now
        heap, buckets = self._heap, self._buckets
        while heap and heap[0] <= last:
            bucket = buckets.get(heap[0])
            if bucket:
                for guard in [g for g in bucket if g.deadline <= now]:
                    bucket.discard(guard)
                    guard.expire()
                if bucket:  # the rest are due later within this tick
                    break
                del buckets[heap[0]]
            self._in_heap.discard(heapq.heappop(heap))
        while heap and heap[0] not in buckets:  # ticks whose guards have all left
            self._in_heap.discard(heapq.heappop(heap))
        if heap:  # the earliest bucket holds the earliest deadline
            self._arm(min(g.deadline for g in buckets[heap[0]]))

    def _use(self, loop: asyncio.AbstractEventLoop) -> None:
        """First use, or a new loop (tests run one after another): nothing carries over.
        A tripwire, not a lock: a server runs one loop (process.py); a guard left on a loop
        that stopped without closing keeps refusing the next one."""
        if self._loop is not None and not self._loop.is_closed() and self.pending():
            raise RuntimeError("a Deadlines serves one event loop; this one has guards on another")
        if self._timer is not None:
            self._timer.cancel()
        self._buckets.clear()
        self._heap.clear()
        self._in_heap.clear()
        self._timer, self._timer_at, self._loop = None, math.inf, loop


class Guard:
    __slots__ = ("_cancelling", "_owner", "_task", "deadline", "expired", "key")

    def __init__(self, owner: Deadlines, deadline: float) -> None:
        self._owner = owner
        self.deadline = deadline
        self.expired = False
        self.key = 0

    def __enter__(self) -> Guard:
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("a deadline guard must be entered inside a task")
        self._task = task
        self._cancelling = task.cancelling()
        owner = self._owner
        # the running loop, without a second get_running_loop(): on CPython 3.11 each
        # call is a getpid() system call (its fork check), ~100 ns here; measured only
        # with the one-write answer (benchmarks/RESULTS.md, "One write per response")
        loop = task.get_loop()
        if loop is not owner._loop:
            owner._use(loop)
        # inline, as in __exit__: the method calls cost ~0.3 µs a request
        key = self.key = int(self.deadline * owner._per_second)
        bucket = owner._buckets.get(key)
        if bucket is None:
            bucket = owner._bucket(key)
        bucket.add(self)
        if self.deadline < owner._timer_at:
            owner._arm(self.deadline)
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if not self.expired:
            buckets = self._owner._buckets
            bucket = buckets.get(self.key)
            if bucket is not None:
                bucket.discard(self)
                if not bucket:  # the timer may stay armed for it: it then finds nothing
                    del buckets[self.key]
        # as asyncio.timeout: the cancellation is ours unless another one came on top of it
        elif (
            self._task.uncancel() <= self._cancelling
            and exc_type is not None
            and issubclass(exc_type, asyncio.CancelledError)
        ):
            raise TimeoutError from exc

    def expire(self) -> None:
        self.expired = True
        self._task.cancel()
