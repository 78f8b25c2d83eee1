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
standing queue one that does not.

* When the lag stays above ``target`` (``limits.shed_target_ms``, 5 ms) for an
  ``INTERVAL`` (100 ms), the limit drops to ``in flight x target / lag`` (the factor kept
  within 0.25..0.9), if more than ``min_limit`` joins are in flight; another cut needs
  another whole interval above the target, so a cut acts before the next (TCP cuts
  once per round trip for the same reason).
* A sample within the target while the worker is near its limit raises it by one (up
  to ``max_limit``, the hard cap ``limits.max_inflight``); one with no join in flight
  puts it back at the cap.
* A request arriving with ``limit`` requests in flight is shed: HTTP 503 with
  ``Retry-After``, gRPC RESOURCE_EXHAUSTED, counted in
  ``featurestore_requests_shed_total{api,reason}``.

What the lag does not count is what a queue of this worker's own does not cause: a
store that is slow (ClickHouse, a paused Redis) keeps joins waiting on the network while
the event loop is idle, so it is never shed for (the deadline ends those joins, the
circuit breaker fails the next ones fast), and neither are cheap requests mixed with
dear ones: no per-request service time is learnt.

Why a few milliseconds and not a share of the deadline: a standing queue adds latency
and no throughput (the worker is busy either way), and a caller's connections are held
for as long as its joins queue. With 256 connections at twice the saturation rate of
3,256 QPS a request may hold its connection ~39 ms on average; the rule before this one
let joins queue until they took a tenth of the deadline (50 ms), they held connections
longer, the callers' own queue grew and their p99.9 from the schedule was 5.2-6.9 s
(benchmarks/RESULTS.md, "Deadlines under overload"). The price is paid by callers of a
saturated worker that would wait rather than be refused: a closed loop of more callers
than the worker needs to be busy gets 503s (the numbers are in the same section). A
worker that is not saturated never sheds: its event loop keeps up, so its limit stays at
the cap. When load drops, the requests in flight fall below the limit at once and
nothing is shed.
"""

from __future__ import annotations

import asyncio
import time
from typing import Final

from prometheus_client import Gauge

from featurestore import metrics
from featurestore.errors import FeatureStoreError, LimitExceeded, Overloaded

LIMIT = Gauge(
    "featurestore_join_inflight_limit",
    "Joins a worker admits in flight before it sheds the next, the lowest worker's: "
    "limits.max_inflight, lower while the worker's event loop is late (a standing queue).",
    multiprocess_mode="livemin",
)
LAG = Gauge(
    "featurestore_event_loop_lag_seconds",
    "How late the load shedder's 10 ms timer ran, the worst of the last quarter second, the "
    "most lagging worker's: above limits.shed_target_ms for 100 ms, the worker sheds.",
    multiprocess_mode="livemax",
)

MIN_CUT: Final = 0.25
MAX_CUT: Final = 0.9
# CoDel's interval: long enough that a burst of joins drains within it (a saturated
# worker completes ~160 joins of batch 100 in 100 ms), short enough that a standing
# queue is cut within a fifth of the 500 ms deadline.
INTERVAL: Final = 0.1
# The lag's sampling period: 10 timer callbacks an interval, each a few microseconds
# (0.05% of a core); uvloop's timers are rounded to the millisecond, 5x below the target.
PERIOD: Final = 0.01
REPORT_EVERY: Final = 25  # samples between gauge updates: four a second
# Below this many joins in flight a worker never sheds for lag: a stall of the machine
# (measured: 0.3-0.6 s pauses on a shared 2-core VM) makes the loop late without any
# queue to shed, and 32 joins are ~20 ms of work even at batch 100 (~0.6 ms each), which
# is what answered joins take when a worker at its floor is saturated.
MIN_LIMIT: Final = 32

INF: Final = float("inf")
INFLIGHT: Final = "inflight"  # the hard cap (limits.max_inflight)
LATENCY: Final = "latency"  # the adaptive limit, lowered by a standing queue


class LoadShedder:
    """One per worker process, shared by its HTTP and gRPC joins; ``watch`` samples the
    event loop they run on. Event loop only."""

    __slots__ = ("_above_since", "inflight", "limit", "max_limit", "min_limit", "target")

    def __init__(self, max_inflight: int, target_seconds: float, *, min_limit: int = MIN_LIMIT) -> None:
        self.max_limit = max_inflight
        # a small cap keeps room to shed below it
        self.min_limit = min(min_limit, max(1, max_inflight // 2))
        self.limit = float(max_inflight)
        self.target = target_seconds
        self.inflight = 0
        self._above_since = INF  # since when every sample's lag was over the target

    def admit(self) -> str | None:
        """None: go ahead (and call ``done`` at the end); else the reason to shed."""
        inflight = self.inflight
        if inflight >= self.limit:
            return INFLIGHT if inflight >= self.max_limit else LATENCY
        self.inflight = inflight + 1
        return None

    def done(self) -> None:
        """An admitted request finished, whatever its outcome."""
        self.inflight -= 1

    def observe(self, lag: float, now: float) -> None:
        """One sample: the event loop ran a timer ``lag`` seconds late at ``now``."""
        if lag <= self.target:
            self._above_since = INF  # the queue drained
            if self.inflight == 0:
                self.limit = self.max_limit
            elif self.limit < self.max_limit and self.inflight >= self.limit / 2:
                self.limit = min(self.max_limit, self.limit + 1)
        elif now < self._above_since:
            self._above_since = now  # the first late sample (INF: none yet)
        elif now - self._above_since >= INTERVAL and self.inflight > self.min_limit:
            self._above_since = now  # a queue stood for an interval: cut, then wait another
            cut = min(MAX_CUT, max(MIN_CUT, self.target / lag))
            self.limit = max(self.min_limit, min(self.limit, self.inflight) * cut)

    async def watch(self) -> None:
        """Sample the running loop's lag every ``PERIOD`` until cancelled; report it."""
        worst, samples = 0.0, 0
        while True:
            due = time.perf_counter() + PERIOD
            await asyncio.sleep(PERIOD)
            now = time.perf_counter()
            lag = max(0.0, now - due)
            self.observe(lag, now)
            worst, samples = max(worst, lag), samples + 1
            if samples == REPORT_EVERY:
                LIMIT.set(self.limit)
                LAG.set(worst)
                worst, samples = 0.0, 0


# What Retry-After says: long enough for the requests in flight to drain (they end by
# their deadline, 0.5 s by default), short enough that a client comes back while a
# burst is still being absorbed.
RETRY_AFTER_SECONDS: Final = 1


def shed(api: str, reason: str) -> FeatureStoreError:
    """Count a shed request and return what its caller is told: UNAVAILABLE (HTTP 503)
    over HTTP, RESOURCE_EXHAUSTED over gRPC (gRPC's status for "out of capacity, back
    off"; its UNAVAILABLE would make clients retry at once)."""
    metrics.requests_shed(api, reason).inc()
    kind = LimitExceeded if api == "grpc" else Overloaded
    return kind(
        f"the server is overloaded and shed this request ({reason}); retry after "
        f"{RETRY_AFTER_SECONDS} s or on another replica",
        details=[{"reason": reason, "retry_after_seconds": RETRY_AFTER_SECONDS}],
    )
