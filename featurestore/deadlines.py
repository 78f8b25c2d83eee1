"""Request deadlines without a loop timer per request.

``asyncio.timeout`` arms a loop timer when entered and cancels it on exit. In the
serving path of a batch-1 join on uvloop that cost ~5.3 µs of the request's ~109 µs of
CPU (creating it 1.0, entering 2.9, leaving 1.4 µs: perf_counter around each, the
demo server's HTTP path in process as ``benchmarks.derived_cpu`` drives it);
``python -m benchmarks.deadlines`` measures both on their own. Almost every read
finishes long before its deadline, so the timer is armed and cancelled for nothing.

Here a guard files its task under its deadline's tick (``tick`` seconds, rounded up:
a read is never cut short, and is cancelled at most two ticks, 2 ms, late; libuv's own
timers count whole milliseconds too) and takes it out on exit: a dict and a set
operation.
One loop timer serves every guard of the loop: it is armed for the earliest tick that
still holds a guard, and only when a guard's tick is earlier than the one armed, or
when it fires. When it fires it cancels every task whose tick has come, as
``asyncio.timeout`` does: the guard turns that ``CancelledError`` into ``TimeoutError``
on exit, and a cancellation from elsewhere (the client went away) passes through.

One ``Deadlines`` per event loop, used from that loop only (a guard's enter and exit
run on it).
"""

from __future__ import annotations

import asyncio
import heapq
import math
import time
from types import TracebackType

TICK_SECONDS = 0.001


class Deadlines:
    __slots__ = ("_buckets", "_heap", "_in_heap", "_loop", "_per_second", "_timer", "_timer_key", "tick")

    def __init__(self, tick: float = TICK_SECONDS) -> None:
        self.tick = tick
        self._per_second = 1 / tick
        self._buckets: dict[int, set[Guard]] = {}  # tick -> guards due then
        self._heap: list[int] = []  # ticks that had a bucket, earliest first (some emptied since)
        self._in_heap: set[int] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_key = math.inf  # the tick the timer is armed for
        self._loop: asyncio.AbstractEventLoop | None = None

    def guard(self, deadline: float) -> Guard:
        """A context manager that cancels the current task at ``deadline`` (a
        ``time.monotonic()`` instant) and raises ``TimeoutError`` from it."""
        return Guard(self, deadline)

    def pending(self) -> int:
        """Guards entered and not yet left or expired."""
        return sum(len(b) for b in self._buckets.values())

    def _bucket(self, key: int) -> set[Guard]:
        """A new bucket for ``key``, in the heap, the timer armed for it if it is the earliest."""
        bucket = self._buckets[key] = set()
        if key not in self._in_heap:
            self._in_heap.add(key)
            heapq.heappush(self._heap, key)
        if key < self._timer_key:
            self._arm(key)
        return bucket

    def _arm(self, key: int) -> None:
        if self._timer is not None:
            self._timer.cancel()
        assert self._loop is not None
        # a tick more: libuv counts whole milliseconds from the start of a loop iteration and
        # may fire up to one early, which would find the tick not yet come and re-arm at once
        delay = key * self.tick - time.monotonic() + self.tick
        self._timer = self._loop.call_later(max(0.0, delay), self._fire)
        self._timer_key = key

    def _fire(self) -> None:
        self._timer, self._timer_key = None, math.inf
        now = time.monotonic() / self.tick
        heap, buckets = self._heap, self._buckets
        while heap and heap[0] <= now:
            key = heapq.heappop(heap)
            self._in_heap.discard(key)
            for guard in buckets.pop(key, ()):
                guard.expire()
        while heap and heap[0] not in buckets:  # ticks whose guards have all left
            self._in_heap.discard(heapq.heappop(heap))
        if heap:
            self._arm(heap[0])

    def _reset(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._buckets.clear()
        self._heap.clear()
        self._in_heap.clear()
        self._timer, self._timer_key, self._loop = None, math.inf, loop


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
        loop = asyncio.get_running_loop()
        if loop is not owner._loop:  # first use, or a new loop (tests): nothing carries over
            owner._reset(loop)
        # the tick at or after the deadline (inline, as below: ~0.3 µs of calls a request)
        key = self.key = int(self.deadline * owner._per_second) + 1
        bucket = owner._buckets.get(key)
        if bucket is None:
            bucket = owner._bucket(key)
        bucket.add(self)
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
        elif self._task.uncancel() <= self._cancelling and exc_type is asyncio.CancelledError:
            raise TimeoutError from exc

    def expire(self) -> None:
        self.expired = True
        self._task.cancel()
