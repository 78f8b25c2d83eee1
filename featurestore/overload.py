"""Load shedding: a saturated worker refuses a join at its start instead of letting a
standing queue of joins build up in front of it, let alone one past the deadline.

An asyncio worker has no queue of its own to bound: every request it has read is a
task on the event loop, and they all slow down together as more arrive. What a new
request will wait is the work ahead of it, so the bound is on requests in flight, and
the bound adapts to what the worker is doing (AIMD, as TCP's congestion window and
Netflix's concurrency-limits do), with CoDel's test for a queue worth shedding
(Nichols and Jacobson, "Controlling Queue Delay", 2012): a burst is a queue that drains
within an interval, a standing queue one that does not.

* The worker's service time is what a join takes when it runs alone (nothing else in
  flight when it started, nothing admitted before it ended): the fastest of those in
  the last ``SERVICE_WINDOW`` (10 s) that had any, and no more than the fastest join of
  that window (a worker's first join is its slowest: connections are opened). A window
  without one, as under sustained overload, keeps the last figure; until the first
  window ends it is 0. A queue is what joins take beyond it.
* When every join completed for an ``INTERVAL`` (100 ms) took longer than service time
  + ``target`` (``limits.shed_target_ms``, 5 ms), a queue stood for the whole interval:
  the limit drops to ``in flight x (service + target) / latency`` (the share of them
  that would finish in time; the factor kept within 0.25..0.9), if more than
  ``min_limit`` joins are in flight. Only joins admitted after the last cut count, so a
  cut takes effect before the next (TCP cuts once per round trip for the same reason).
* A join that completes within service time + target while the worker is near its
  limit raises it by ``1 / limit`` (one per limit's worth of such joins, as TCP's
  window grows by one per round trip; up to ``max_limit``, the hard cap
  ``limits.max_inflight``), and a worker that drains (no join left in flight, the last
  one within service time + target) is back at the cap. (A worker at its floor drains
  now and then between joins without its queue having gone; back at the cap, it
  admitted 100+ joins at once and queued them 50-90 ms.)
* A request arriving with ``limit`` requests in flight is shed: HTTP 503 with
  ``Retry-After``, gRPC RESOURCE_EXHAUSTED, counted in
  ``featurestore_requests_shed_total{api,reason}``.

Why a few milliseconds and not a share of the deadline: a standing queue adds latency
and no throughput (the worker is busy either way), and a caller's connections are held
for as long as its joins queue. With 256 connections at twice the saturation rate of
3,256 QPS a request may hold its connection ~39 ms on average; answered joins that queued
up to 50 ms (0.1 of the deadline, the rule until this one) held them longer, the callers'
own queue grew and their p99.9 from the schedule was 5.2-6.9 s (benchmarks/RESULTS.md,
"Deadlines under overload"). A target from the worker's own service time holds at any
saturation rate and with a store whose joins are slow but not queued (ClickHouse: its
service time is its latency). The price is paid by callers of a saturated worker that
would wait rather than be refused: a closed loop of more callers than the worker needs
to be busy gets 503s (the numbers are in the same section). A worker that is not
saturated never sheds: its joins do not queue, so its limit stays at the cap. When load
drops, the requests in flight fall below the limit at once and nothing is shed.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Final

from prometheus_client import Gauge

from featurestore import metrics
from featurestore.errors import FeatureStoreError, LimitExceeded, Overloaded

LIMIT = Gauge(
    "featurestore_join_inflight_limit",
    "Joins admitted in flight before the next is shed, summed over workers: limits.max_inflight "
    "each, lower while a worker sheds for a standing queue.",
    multiprocess_mode="livesum",
)
SERVICE = Gauge(
    "featurestore_join_service_seconds",
    "A join's service time as the load shedder measures it (the fastest that ran alone in the "
    "last 10 s; 0 before), the slowest worker's: it sheds when joins take more than this + "
    "limits.shed_target_ms for 100 ms.",
    multiprocess_mode="livemax",
)

MIN_CUT: Final = 0.25
MAX_CUT: Final = 0.9
# CoDel's interval: long enough to hold ~160 joins of a saturated worker at batch 100
# (1,600/s), so a burst that drains within it is not cut; short enough that a standing
# queue is cut within a fifth of the 500 ms deadline.
INTERVAL: Final = 0.1
# The service time is a windowed minimum, as BBR's round-trip time is (its window is
# 10 s too): a minimum ignores the joins slowed by those that arrived while they ran,
# and a window lets a store that became slower (or faster) be seen as such.
SERVICE_WINDOW: Final = 10.0
# Below this many joins in flight a worker never sheds for latency: a stall of the
# machine (measured: 0.3-0.6 s pauses on a shared 2-core VM) slows every join without
# any queue to shed, and 32 joins are ~20 ms of work even at batch 100 (~0.6 ms each),
# which is what answered joins take when a worker at its floor is saturated.
MIN_LIMIT: Final = 32

INF: Final = float("inf")
INFLIGHT: Final = "inflight"  # the hard cap (limits.max_inflight)
LATENCY: Final = "latency"  # the adaptive limit, lowered by a standing queue


class LoadShedder:
    """One per worker process, shared by its HTTP and gRPC joins. Event loop only."""

    __slots__ = (
        "_above_since",
        "_clock",
        "_last_cut",
        "_service_end",
        "_solo",
        "_solo_fastest",
        "_window_fastest",
        "inflight",
        "limit",
        "max_limit",
        "min_limit",
        "service",
        "target",
    )

    def __init__(
        self,
        max_inflight: int,
        target_seconds: float,
        *,
        min_limit: int = MIN_LIMIT,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.max_limit = max_inflight
        self.min_limit = min(min_limit, max_inflight)
        self.limit = float(max_inflight)
        self.target = target_seconds
        self.service = 0.0  # seconds; 0 until the first window ends
        self.inflight = 0
        self._clock = clock
        self._solo = -1.0  # the start of the join running alone, if one is
        self._last_cut = -INF
        self._above_since = INF  # since when every completion took over service + target
        self._solo_fastest = INF  # of this service window's joins that ran alone
        self._window_fastest = INF  # of all this service window's joins
        self._service_end = clock() + SERVICE_WINDOW

    def flush(self) -> None:
        """Report the limit and the service time (metrics.BUFFERS: at every metrics flush)."""
        LIMIT.set(self.limit)
        SERVICE.set(self.service)

    def admit(self, started: float) -> str | None:
        """None: go ahead (and call ``done`` with the same ``started`` at the end); else
        the reason to shed. ``started``: when the request began, by the shedder's clock
        (``time.perf_counter``)."""
        inflight = self.inflight
        if inflight >= self.limit:
            return INFLIGHT if inflight >= self.max_limit else LATENCY
        self._solo = started if inflight == 0 else -1.0  # one admitted meanwhile: not alone
        self.inflight = inflight + 1
        return None

    def done(self, started: float) -> None:
        """An admitted request that started at ``started`` finished, whatever its outcome."""
        inflight = self.inflight
        self.inflight = inflight - 1
        now = self._clock()
        seconds = now - started
        if seconds < self._window_fastest:
            self._window_fastest = seconds
        if started == self._solo and seconds < self._solo_fastest:
            self._solo_fastest = seconds
        if now >= self._service_end and self._solo_fastest < INF:
            self.service = min(self._solo_fastest, self._window_fastest)
            self._solo_fastest = self._window_fastest = INF
            self._service_end = now + SERVICE_WINDOW
        allowed = self.service + self.target
        if started >= self._last_cut:
            if seconds <= allowed:
                self._above_since = INF  # the queue drained
            elif now < self._above_since:
                self._above_since = now  # the first slow completion (INF: none yet)
            elif now - self._above_since >= INTERVAL and inflight > self.min_limit:
                self._last_cut, self._above_since = now, INF  # a queue stood: cut it
                cut = min(MAX_CUT, max(MIN_CUT, allowed / seconds))
                self.limit = max(self.min_limit, min(self.limit, inflight) * cut)
                return
        if seconds > allowed or self.limit >= self.max_limit:
            return
        if inflight == 1:  # drained, and the last join did not queue: no queue is left
            self.limit = self.max_limit
        elif inflight >= self.limit / 2:
            self.limit = min(self.max_limit, self.limit + 1 / self.limit)


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
