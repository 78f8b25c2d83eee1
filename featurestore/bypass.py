"""When a read goes past the row cache: a read consults the cache only while the round
trip it may save is worth the fills it will pay for.

A read that consults the cache looks every key up, asks the store for the misses and
caches them. With every key cached it saves the round trip to the store (~120 µs of
server CPU per join on loopback Redis at batch 1); with even one miss it pays the round
trip anyway, plus a fill per miss (~4 µs with an eviction). Both measured by
`python -m benchmarks.cache_cost`. A batch-100 join of uniform keys (two views, ~92%
of keys cached) almost never hits in full and pays ~16 fills: such joins cost 14% to 73%
more CPU with the cache than without it in every run before this rule existed.

So a read of n keys consults the cache only while

    P(full hit) x fills_per_round_trip >= expected misses

with P(full hit) the product over its views of h ** k and the expected misses the sum
of k x (1 - h) (h the view's recent key hit rate, k the read's keys of it);
``fills_per_round_trip`` is 30 (120 / 4; the benchmark prints its own figure). Otherwise
it goes to the store for every key and fills nothing.

Skipped reads fill nothing, so the hit rate they would see is not the one consulting
would reach: a hot set that consulting keeps cached looks cold to a cache nobody fills.
So while the rule skips, a **trial** every ``trial_every`` seconds (the cache TTL: what
was filled has expired by then) consults every read for ``trial_seconds``: long enough
for a hot set to load (a batch-100 workload at 200 joins a second reads 40,000 keys a
second), after which the rates say whether consulting pays. Reads of fewer than 8 keys
always consult: their worst case (every key missed) is 8 fills, a quarter of a round
trip, and without them a cold cache would never warm for batch-1 traffic, which gains
15-55% QPS from it (`benchmarks.cache_admission`). A view's rate starts at 1 (an unmeasured view consults). A store
across a network, where the round trip costs latency more than CPU, is worth a higher
figure; 0: every read consults.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Sequence
from typing import Final

from featurestore.sources.base import ViewQuery

# A view's hit rate weighs its last ~2,000 looked-up keys: a batch-10 workload on two
# views renews it every ~100 joins, a batch-100 trial within its first 10 joins.
_WINDOW_KEYS: Final = 2_000
_KEEP_PER_KEY: Final = 1.0 - 1.0 / _WINDOW_KEYS
ALWAYS_BELOW: Final = 8  # keys: reads this small always consult (see above)


class CacheBypass:
    """Per view, the recent key hit rate of consulted reads; per read, consult or skip."""

    __slots__ = (
        "_clock",
        "_hits",
        "_looked",
        "_next_trial",
        "_rate",
        "_trial_until",
        "fills_per_round_trip",
        "skipped",
        "trial_every",
        "trial_seconds",
        "unmeasured",
    )

    def __init__(
        self,
        fills_per_round_trip: int,
        trial_every: float = 30.0,
        trial_seconds: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        unmeasured: float = 1.0,
    ) -> None:
        """``unmeasured``: the hit rate of a view before its first consulted read."""
        if fills_per_round_trip < 0:
            raise ValueError("fills_per_round_trip must be 0 (always consult) or positive")
        if trial_every <= 0 or trial_seconds <= 0:
            raise ValueError("trial_every and trial_seconds must be positive")
        self.fills_per_round_trip = fills_per_round_trip
        self.trial_every = trial_every
        self.trial_seconds = trial_seconds
        self._clock = clock
        self._hits: dict[str, float] = {}
        self._looked: dict[str, float] = {}
        self._rate: dict[str, float] = {}
        self._trial_until = -1.0
        self._next_trial = clock() + trial_every
        self.unmeasured = unmeasured
        self.skipped = 0  # reads sent past the cache

    def consults(self, queries: Sequence[ViewQuery]) -> bool:
        """Whether this read should consult the cache (False: read every key from the store)."""
        per_trip = self.fills_per_round_trip
        if per_trip == 0 or sum(len(q.keys) for q in queries) < ALWAYS_BELOW:
            return True
        chance, misses = 1.0, 0.0
        rate, unmeasured = self._rate, self.unmeasured
        for q in queries:
            h, k = rate.get(q.view.name, unmeasured), len(q.keys)
            chance *= h**k
            misses += k * (1.0 - h)
        if chance * per_trip >= misses:
            return True
        now = self._clock()
        if now < self._trial_until:
            return True
        if now >= self._next_trial:
            self._trial_until = now + self.trial_seconds
            self._next_trial = now + self.trial_every
            return True
        self.skipped += 1
        return False

    def observe(self, view: str, hits: int, looked: int) -> None:
        """A consulted read of ``view`` found ``hits`` of its ``looked`` keys cached."""
        if looked <= 0:
            return
        keep = _KEEP_PER_KEY**looked
        h = self._hits.get(view, 0.0) * keep + hits
        n = self._looked.get(view, 0.0) * keep + looked
        self._hits[view], self._looked[view] = h, n
        self._rate[view] = h / n

    def hit_rate(self, view: str) -> float:
        """The view's recent key hit rate (``unmeasured`` before any consulted read)."""
        return self._rate.get(view, self.unmeasured)

    def keep_only(self, views: Collection[str]) -> None:
        """Forget the rates of views no longer served (the registry dropped them)."""
        for gone in [v for v in self._rate if v not in views]:
            del self._rate[gone], self._hits[gone], self._looked[gone]
