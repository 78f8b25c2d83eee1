"""Load shedding: a saturated worker refuses a join at its start instead of letting a
standing queue of work build up in front of it, let alone one past the deadline.

An asyncio worker has no queue of its own to bound: every request it has read is a
task on the event loop, and they all slow down together as more arrive. What they wait
for is the event loop: each step of a join (decode, each store read's reply, encode)
runs only when the steps queued before it have run. So the queue is measured where it
forms, as the event loop's lag (how late a 10 ms timer runs), and the bound is on joins
in flight, adapted as TCP's congestion window and Netflix's concurrency-limits adapt
theirs (AIMD), with CoDel's test for a queue worth shedding (Nichols and Jacobson,
"Controlling Queue Delay", 2012; Facebook's RPC servers use it with the same 5 ms and
100 ms, "Fail at Scale", 2015): a burst is a queue that drains within an interval, a
standing queue one that does not (judged by the interval's mean lag, not its minimum:
below).

* The lag is judged an ``INTERVAL`` (100 ms, ten samples) at a time, by its mean. When
  two intervals in a row average above ``target`` (``limits.shed_target_ms``, 5 ms) with
  more joins in flight than the floor (``min_limit``) at more than half of their samples,
  the limit drops to ``min(limit, in flight) x target / lag`` (the last interval's means;
  the factor kept within 0.25..0.9, never below the floor), and again after each further
  late interval. One late interval is a burst, unless the worker is saturated and its
  joins in flight (the mean) have more of the loop's CPU left than an interval has, at
  what a join costs (``LEFT``: half of it each): that queue cannot drain within the next
  interval (benchmarks/RESULTS.md, "The batch-1,000 overload tail"). Batch 1 never
  holds enough joins for it.
* The floor is ``MIN_LIMIT`` joins (``limits.shed_min_inflight``, 64), or fewer: those that
  fit in ``floor_seconds`` of CPU (``limits.shed_floor_ms``, 25 ms) at what a join costs
  the worker, measured while it is saturated (its loop's CPU time over the joins
  completed: join_cost.py) and forgotten after 10 s unsaturated: 64 at batch 1 and 10,
  fewer from batch ~100, a few at 1,000.
* A second interval on time in a row with the limit binding (half of it in flight at
  one of its samples or more) raises the limit by a tenth, at least one (up to
  ``max_limit``, the hard cap ``limits.max_inflight``); late and on-time intervals in
  turn leave it where it is. One interval on time with the limit never binding puts it
  back at the cap.
* A request arriving with ``limit`` requests in flight is shed: HTTP 503 with
  ``Retry-After``, gRPC RESOURCE_EXHAUSTED, counted in
  ``featurestore_requests_shed_total{api,reason}``. So is a decoded join whose entity
  rows would take those in flight past ``limits.shed_max_rows`` (row_cap.py: the bound
  on work at an onset, before any cost is known; reason ``rows``).
* So is one with less of its deadline left than the loop's standing lag (the smaller of
  the last two intervals' mean lags: one late interval is a burst or a stall, not a
  queue): every step of a join waits about that long for the loop, so it could not
  answer in time (reason ``deadline``; a float comparison per request).

Why the mean and not CoDel's minimum: a saturated worker's loop does not run late
evenly. Its joins' store replies come back together and are answered in one long loop
iteration, then the loop waits for the next replies, so its samples alternate between
20-40 ms late and on time. Judged by every sample (or the smallest), the interval was
never late: in a trace of 2x overload at batch 100 (2026-12-06, before this rule) the
limit rose by one per on-time sample, 61 to 97 in 1.2 s, while the loop ran 41 ms late
at the median (benchmarks/RESULTS.md, "Deadlines under overload", has that trace).

A cut follows each late interval, before the joins admitted under the last limit have
all finished (TCP waits a round trip between cuts; a worker at twice its saturation rate
answers joins 100-300 ms after their write at p99, more than an interval). It can cut
deeper than needed; the floor bounds that (under 2x overload at batch 100 the limit sat
at the floor at the median; same section).

What the lag does not count is what a queue of this worker's own does not cause: a
slow store (ClickHouse, a paused Redis) keeps joins waiting while the loop is idle (the
deadline ends those joins, the circuit breaker fails the next ones fast). What it does
count is any work on the loop: pushes, admin requests and scrapes lag it too, and only
joins are shed for it.

Why a few milliseconds and not a share of the deadline: a standing queue adds latency
and no throughput, and a caller's connections are held for as long as its joins queue.
The rule before this one let joins queue until they took a tenth of the deadline (50
ms): at twice a saturation rate of 2,500-3,800 QPS the callers' own queue grew and their
p99.9 from the schedule was 5.2-6.9 s (benchmarks/RESULTS.md, "Deadlines under
overload"). The price is paid by callers of a saturated worker that would wait rather
than be refused: a closed loop of many more callers than the worker needs to be busy
gets 503s. A worker that is not saturated never sheds for lag: its limit stays at the cap.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from typing import Final

from prometheus_client import Gauge

from featurestore.config import LimitsConfig
from featurestore.join_cost import JoinCost
from featurestore.row_cap import MAX_ROWS, ROWS, RowCap

log = logging.getLogger(__name__)

LIMIT = Gauge(
    "featurestore_join_inflight_limit",
    "Joins a worker admits in flight before it sheds the next, the lowest worker's: "
    "limits.max_inflight, lower while the worker's event loop is late (a standing queue); "
    "+Inf with limits.shed false.",
    multiprocess_mode="livemin",
)
# Until its worker's watch() reports: a worker starting up (0 at import in multiprocess
# mode) must not read as one shedding everything.
LIMIT.set(math.inf)
FLOOR = Gauge(
    "featurestore_join_inflight_floor",
    "Joins in flight below which a worker never sheds for lag, the lowest worker's: "
    "limits.shed_min_inflight, or the fewer joins that fit in limits.shed_floor_ms of its "
    "event loop's CPU at the join cost measured while it was saturated.",
    multiprocess_mode="livemin",
)
FLOOR.set(math.inf)  # (as LIMIT: a worker starting up is not one that never sheds)
ROWS_INFLIGHT = Gauge(
    "featurestore_join_inflight_rows",
    "Entity rows of the joins in flight, the most loaded worker's (as its shedder last reported, "
    "every 250 ms; 0 with limits.shed false, which counts none). A worker whose event loop was "
    "later than limits.shed_target_ms at a sample of the last 100 ms sheds a join that would take "
    "its rows past limits.shed_max_rows.",
    multiprocess_mode="livemax",
)
LAG = Gauge(
    "featurestore_event_loop_lag_seconds",
    "How late the worker's 10 ms timer ran, the worst of its last 25 samples (a quarter "
    "second when on time), the most lagging worker's. Shedding judges each 100 ms "
    "interval's mean lag (at most this): above limits.shed_target_ms for two intervals in "
    "a row with more joins in flight than the floor (one, when they have more than an "
    "interval of CPU left), a worker with limits.shed on sheds.",
    multiprocess_mode="livemax",
)

MIN_CUT: Final = 0.25
MAX_CUT: Final = 0.9
LATE_INTERVALS: Final = 2  # late intervals in a row before the first cut (a burst drains within one; LEFT)
# The share of its CPU a join in flight has left, on average (a late interval whose joins
# have more than an interval of it left is cut at once). Counted whole (7cce4af), batch 100
# tripped it (up to 128 joins a worker at ~0.9 ms): the default answered 31% fewer joins
# than the floor of 64 beside it (2026-12-07 03:26). Halved: 222 joins of 0.9 ms, 118 at
# the onset's reading (up to 4x high), which 128 reach; 33-67 of batch 1,000.
LEFT: Final = 0.5
GROWTH: Final = 0.1  # a 2nd on-time interval in a row, the limit binding: up a tenth (at least 1)
_SLACK: Final = 1e-6  # an interval of samples 10 ms apart is complete at 100 ms, float sums or not
# CoDel's interval: long enough that a burst of joins drains within it (a saturated
# worker completes ~140 joins of batch 100 in 100 ms), short enough that a standing
# queue is cut within a fifth of the 500 ms deadline.
INTERVAL: Final = 0.1
# The lag's sampling period: 10 samples an interval; uvloop's timers are exact to the
# millisecond, 5x below the target. A sample costs ~50 us on the loop: an idle worker
# spends 0.5% of a core on them.
PERIOD: Final = 0.01
# The row cap (row_cap.py) binds while one of the last this many samples (an interval's)
# was late: a saturated loop's samples alternate late and on time (module docstring).
ROW_CAP_SAMPLES: Final = round(INTERVAL / PERIOD)
REPORT_EVERY: Final = 25  # samples between gauge updates
# The floor: with no more joins in flight than it, a worker never sheds for lag. Why a
# floor at all: a stall of the machine (measured: 0.3-0.6 s pauses on a shared 2-core VM)
# makes the loop late without any queue to shed, and a closed loop of callers is a queue
# of its own size that waits rather than being refused. It is ``MIN_LIMIT`` joins
# (limits.shed_min_inflight), lowered for costly joins to those that fit in
# ``FLOOR_SECONDS`` of the loop's CPU at the cost measured while saturated (join_cost.py;
# limits.shed_floor_ms). 64 joins: at batch 100 (~0.4 ms each) ~25 ms of work. At 32
# (until 2026-12-06 14:54, 0e1af27) 64 callers in closed loops on 2 workers had 0-51% of
# their answers shed over four runs, 96 callers 83-86%; at 64, none of 64 or 96 callers',
# with 33-40% more answered QPS at 96. The price is an open loop past saturation waiting
# longer: at twice the saturation rate p99.9 220-224 against 207-208 ms, the median twice
# as long, 7% fewer answered (benchmarks/RESULTS.md, "Deadlines under overload", "The
# shedder's floor"). A count is no bound on the joins' work: at batch 1,000 64 joins let
# a queue stand (p99.9 569-771 ms, past the 510 allowed); lowered to 4-8 joins by their
# cost, 357-577 ms, met at two runs of five: the onset's joins are admitted before a cost
# is known (the row cap bounds those: row_cap.py). Its price is closed loops of big
# batches, refused from a few callers a worker (the batch-1,000 section). Why the count
# stays as a ceiling: 25 ms is ~250 joins of batch 1, more than the 128 connections a
# worker holds under 256 callers, and an open loop's excess would then queue at its
# callers, never shed.
MIN_LIMIT: Final = 64
FLOOR_SECONDS: Final = 0.025
MIN_FLOOR: Final = 2  # one join computing while another waits for its store
# After this many intervals in a row without a saturated one (10 s; a stall or a late
# interval of an idle loop is not one) the floor is the count again until the next
# overload measures its joins: a worker saturated once by batches of 1,000 that then
# serves batch 1 would otherwise keep a floor of a few joins (review 31b).
CALM_INTERVALS: Final = 100

INF: Final = math.inf
INFLIGHT: Final = "inflight"  # the hard cap (limits.max_inflight)
LATENCY: Final = "latency"  # the adaptive limit, lowered by a standing queue
DEADLINE: Final = "deadline"  # less time left than the loop's standing lag


class LoadShedder:
    """One per worker process, shared by its HTTP and gRPC joins; ``watch`` samples the
    event loop they run on. Event loop only. ``sheds`` False: only the lag is reported."""

    __slots__ = (
        "_binding",
        "_calm",
        "_completed",
        "_inflights",
        "_lag_sum",
        "_last_mean",
        "_late",
        "_on_time",
        "_on_time_samples",
        "_refused",
        "_since",
        "floor_seconds",
        "inflight",
        "join_cost",
        "lag",
        "limit",
        "max_floor",
        "max_limit",
        "min_limit",
        "rows",
        "sheds",
        "target",
    )

    def __init__(
        self,
        max_inflight: int,
        target_seconds: float,
        *,
        floor_seconds: float = FLOOR_SECONDS,
        min_limit: int = MIN_LIMIT,
        max_rows: int = MAX_ROWS,
        sheds: bool = True,
        cpu_clock: Callable[[], float] = time.thread_time,
    ) -> None:
        """``min_limit``: the floor in joins (limits.shed_min_inflight), lowered to the joins
        that fit in ``floor_seconds`` of CPU. ``max_rows``: the row cap (row_cap.py; none
        unless ``sheds``). ``cpu_clock``: the loop thread's CPU seconds."""
        self.max_limit = max_inflight
        self.floor_seconds = floor_seconds
        # a small cap keeps room to shed: the floor is at most half of it
        self.max_floor = self.min_limit = min(min_limit, max(1, max_inflight // 2))
        self.limit = float(max_inflight)
        self.target = target_seconds
        self.sheds = sheds
        self.inflight = 0
        self.rows = RowCap(max_rows if sheds else INF)
        self.lag = 0.0  # the standing lag: the smaller of the last two intervals' means
        self._last_mean = 0.0
        # The interval being sampled: since when, its samples' lags (summed) and joins in
        # flight (each), and whether the limit bound at any of them (half of it in flight).
        self._since = INF
        self._inflights: list[int] = []  # (how many: the interval's samples)
        self._lag_sum = 0.0
        self._binding = False
        self._late = self._on_time = 0  # intervals late (with a queue worth shedding) / on time, in a row
        self._on_time_samples = ROW_CAP_SAMPLES  # samples on time in a row (the row cap binds below)
        # What a join costs (join_cost.py), from the joins completed and the requests
        # refused since the last interval's end.
        self.join_cost = JoinCost(cpu_clock)
        self._completed = self._refused = self._calm = 0  # (calm: intervals not saturated, in a row)

    @classmethod
    def from_limits(
        cls, limits: LimitsConfig, cpu_clock: Callable[[], float] = time.thread_time
    ) -> LoadShedder:
        """The worker's shedder as configured (it sheds only with ``limits.shed``)."""
        return cls(
            limits.max_inflight,
            limits.shed_target_ms / 1000,
            floor_seconds=limits.shed_floor_ms / 1000,
            min_limit=limits.shed_min_inflight,
            max_rows=limits.shed_max_rows,
            sheds=limits.shed,
            cpu_clock=cpu_clock,
        )

    def admit(self, remaining: float = INF) -> str | None:
        """None: go ahead (and call ``done`` at the end); else the reason to shed.
        ``remaining``: seconds left of the request's deadline."""
        inflight = self.inflight
        if inflight >= self.limit:
            self._refused += 1
            return INFLIGHT if inflight >= self.max_limit else LATENCY
        if 0.0 < remaining < self.lag:  # (a deadline already gone is the join's 504, not a shed)
            self._refused += 1
            return DEADLINE
        self.inflight = inflight + 1
        return None

    def admit_rows(self, rows: int) -> str | None:
        """After ``admit``, once the join's entity rows are known (row_cap.entity_rows): None,
        or ``ROWS`` to shed it, its admission undone (no ``done`` for it then). The cap binds
        while a sample of the last interval was late: joins waiting on a slow store with the
        loop idle are no queue of this worker's (module docstring), and are not shed for."""
        if self.rows.take(rows, self._on_time_samples < ROW_CAP_SAMPLES):
            return None
        self.inflight -= 1
        self._refused += 1
        return ROWS

    def done(self, rows: int = 0) -> None:
        """An admitted request finished, whatever its outcome (``rows``: those it took)."""
        self.inflight -= 1
        self.rows.give(rows)
        self._completed += 1

    def _measure(self, late: bool, seconds: float) -> None:
        """At an interval's end: the floor from what a join costs, when measured anew."""
        completed, refused = self._completed, self._refused
        self._completed = self._refused = 0
        cost = self.join_cost
        if cost.interval(late, seconds, completed, refused):
            fits = max(MIN_FLOOR, round(self.floor_seconds / cost.seconds))
            self.min_limit = min(self.max_floor, fits)
            self.limit = max(self.limit, self.min_limit)  # a floor risen over the limit lifts it
        self._calm = 0 if cost.saturated else self._calm + 1
        if self._calm == CALM_INTERVALS and cost.seconds:
            cost.forget()  # the next overload's joins may be others
            self.min_limit = self.max_floor

    def observe(self, lag: float, now: float) -> None:
        """One sample: the event loop ran a timer ``lag`` seconds late at ``now``. The
        limit and the standing lag move when an interval is complete (module docstring)."""
        inflight = self.inflight
        self._on_time_samples = 0 if lag > self.target else self._on_time_samples + 1
        if now < self._since:
            self._since = now  # the first sample of an interval
        self._lag_sum += lag
        self._inflights.append(inflight)
        if inflight >= self.limit / 2:
            self._binding = True
        if now - self._since < INTERVAL - _SLACK:
            return
        binding, inflights, since = self._binding, self._inflights, self._since
        n = len(inflights)
        mean_lag, mean_inflight = self._lag_sum / n, sum(inflights) / n
        self._since, self._lag_sum, self._inflights, self._binding = now, 0.0, [], False
        self.lag, self._last_mean = min(mean_lag, self._last_mean), mean_lag
        self._measure(mean_lag > self.target, now - since)
        if mean_lag > self.target:
            self._on_time = 0
            floor = self.min_limit
            if 2 * sum(1 for x in inflights if x > floor) <= n:
                self._late = 0  # late with no queue worth shedding (half the time or less): a stall
                return
            self._late += 1
            # A queue stood through the last two intervals: cut, and again after each
            # further late one (the module docstring says why not later). So does a
            # saturated one whose joins in flight have more of the loop's CPU left than
            # an interval has (half a join's cost each, on average): no burst that drains
            # within the next interval.
            cost = self.join_cost
            if self._late >= LATE_INTERVALS or (
                cost.saturated and mean_inflight * cost.seconds * LEFT > INTERVAL
            ):
                cut = min(MAX_CUT, max(MIN_CUT, self.target / mean_lag))
                self.limit = max(floor, min(self.limit, mean_inflight) * cut)
            return
        self._late = 0  # on time: the queue drained
        self._on_time += 1
        if self.limit >= self.max_limit:
            return
        if not binding:  # no queue, and room throughout: recovered
            self.limit = self.max_limit
        elif self._on_time >= 2:  # (late and on time in turn is neither cut nor raised)
            self.limit = min(self.max_limit, self.limit + max(1.0, self.limit * GROWTH))

    async def watch(self) -> None:
        """Sample the running loop's lag every ``PERIOD`` until cancelled, and report
        it. If a sample fails, the failure is logged once and the limit opened for good
        (the hard cap stays): a shedder that cannot see the queue must not shed for one."""
        try:
            await self._sample()
        finally:  # cancelled, or a report failed: nothing adapts the limit any more, and
            # no lag is known (a lag frozen at its last sample would shed by the deadline)
            self._open()

    def _open(self) -> None:
        """Shed at the hard cap only: no limit, standing lag or late sample (the row cap)."""
        self.limit, self.lag, self._on_time_samples = self.max_limit, 0.0, ROW_CAP_SAMPLES

    async def _sample(self) -> None:
        worst, samples, sheds = 0.0, 0, self.sheds
        self.join_cost.restart()  # (what the loop's thread spent starting up is no join's)
        self._report(0.0, sheds)
        while True:
            due = time.perf_counter() + PERIOD
            await asyncio.sleep(PERIOD)
            now = time.perf_counter()
            lag = max(0.0, now - due)
            if sheds:
                try:
                    self.observe(lag, now)
                except Exception:
                    log.exception("the load shedder failed a sample: it sheds at the hard cap only from now")
                    self._open()
                    sheds = False
            worst, samples = max(worst, lag), samples + 1
            if samples >= REPORT_EVERY:
                self._report(worst, sheds)
                worst, samples = 0.0, 0

    def _report(self, lag: float, sheds_for_lag: bool) -> None:
        LIMIT.set(self.limit if self.sheds else INF)
        FLOOR.set(self.min_limit if sheds_for_lag else INF)  # (none once a sample failed)
        LAG.set(lag)
        ROWS_INFLIGHT.set(self.rows.rows)
