"""Load shedding: a saturated worker refuses a join at its start instead of queueing it
past its shedding target (a share of the deadline), let alone past the deadline.

An asyncio worker has no queue of its own to bound: every request it has read is a
task on the event loop, and they all slow down together as more arrive. What a new
request will wait is the work ahead of it, so the bound is on requests in flight, and
the bound adapts to what the worker is doing (AIMD, as TCP's congestion window and
Netflix's concurrency-limits do):

* a join that completes slower than ``target`` (a share of the deadline) means the
  requests in flight queue on each other: the limit drops to ``in flight x target /
  latency`` (the share of them that would finish in time; the factor kept within
  0.25..0.9, the limit never below ``min_limit``), but only for a join admitted after the
  last cut, so a cut takes effect before the next (TCP cuts once per round trip for the
  same reason);
* a join that completes within ``target`` while the worker is near its limit raises it
  by one (up to ``max_limit``, the configured hard cap), and a worker that drains (no
  join left in flight) is back at the cap;
* a request arriving with ``limit`` requests in flight is shed: HTTP 503 with
  ``Retry-After``, gRPC RESOURCE_EXHAUSTED, counted in
  ``featurestore_requests_shed_total{api,reason}``.

With a 500 ms deadline and the default share of 0.1, a join is shed when the worker
is queueing joins past 50 ms: answered requests stay well within the deadline and, more
to the point, a caller's connections turn over fast enough that its own queue does not
grow (at 0.5, answered joins queued ~250 ms at 2x saturation: the server met its
deadline but the callers fell 5-12 s behind). The price is paid by a saturated worker's
callers: a join that would have been answered in ~150 ms, within the deadline, may be
shed instead (128 closed-loop callers at batch 100 on 2 workers: 16-25% shed, where
0.5 shed none). A worker that is not saturated never sheds: its completions are fast, so
its limit stays at the cap. When load drops, the requests in flight fall below the
limit at once and nothing is shed.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Final

from featurestore import metrics
from featurestore.errors import FeatureStoreError, LimitExceeded, Overloaded

MIN_CUT: Final = 0.25
MAX_CUT: Final = 0.9
# Below this many joins in flight a worker never sheds for latency: a stall of the
# machine (measured: 0.3-0.6 s pauses on a shared 2-core VM) slows every join without
# any queue to shed, and 32 joins are ~25 ms of work even at batch 100 (~0.8 ms each).
MIN_LIMIT: Final = 32

INFLIGHT: Final = "inflight"  # the hard cap (limits.max_inflight)
LATENCY: Final = "latency"  # the adaptive limit, lowered by slow completions


class LoadShedder:
    """One per worker process, shared by its HTTP and gRPC joins. Event loop only."""

    __slots__ = ("_clock", "_last_decrease", "inflight", "limit", "max_limit", "min_limit", "target")

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
        self.inflight = 0
        self._clock = clock
        self._last_decrease = -float("inf")

    def admit(self) -> str | None:
        """None: go ahead (and call ``done`` at the end); else the reason to shed."""
        if self.inflight >= self.limit:
            return INFLIGHT if self.inflight >= self.max_limit else LATENCY
        self.inflight += 1
        return None

    def done(self, started: float) -> None:
        """An admitted request that started at ``started`` (by the shedder's clock,
        ``time.perf_counter``) finished, whatever its outcome."""
        inflight = self.inflight
        self.inflight = inflight - 1
        now = self._clock()
        seconds = now - started
        if seconds > self.target:
            if started >= self._last_decrease:
                self._last_decrease = now
                cut = min(MAX_CUT, max(MIN_CUT, self.target / seconds))
                self.limit = max(self.min_limit, min(self.limit, inflight) * cut)
        elif inflight == 1:
            self.limit = self.max_limit  # drained: whatever queue there was is gone
        elif self.limit < self.max_limit and inflight >= self.limit / 2:
            self.limit = min(self.max_limit, self.limit + 1)


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
