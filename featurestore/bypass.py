"""When a read goes past the row cache: a read consults the cache only while the round
trip it may save is worth more than the fills it will pay for.

A read that consults the cache looks every key up, asks the store for the misses and
caches them. With every key cached it saves the round trip to the store (~35-50 µs of
server CPU on loopback Redis; a cached row and a row read from Redis cost about the
same, 1.6-1.9 µs a key either way, `python -m benchmarks.cache_cost`); with even one
miss it pays the round trip anyway, and each miss costs a fill on top (~4 µs with an
eviction, a tenth of a round trip). Batch-100 joins with uniform keys hit 97% of keys,
so 0.97 ** 200 = 0.2% of them skip the round trip while each pays ~6 fills: they cost
22-32% more CPU with the cache than without it (benchmarks/RESULTS.md).

So a read of n keys (over all its views) consults the cache only while

    P(full hit) x fills_per_round_trip >= expected misses

with P(full hit) the product over its views of h ** k and the expected misses the sum of
k x (1 - h) (h the view's recent key hit rate, k the read's keys of it), and
``fills_per_round_trip`` 10 by default. Reads of fewer than 32 keys always consult:
their lookups cost little, and their fills are what warm the cache for the batch-1
traffic that gains 20-55% QPS from it (skipped, a cold cache would never fill). A
skipped read goes to the store for every key and fills nothing; one in ``probe_every``
consults anyway, so the hit rates stay current and the cache comes back when the workload
turns (a rate starts at 1: an unmeasured view consults). A store across a network,
where the round trip costs latency more than CPU, is worth a higher figure; 0: every
read consults.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from featurestore.sources.base import ViewQuery

# A view's hit rate weighs its last ~2,000 looked-up keys: a batch-10 workload on two
# views renews it every ~100 reads, a fraction of a second at 4,000 reads a second; a
# skipped batch-100 workload, with one probe in 64, within a few seconds.
_WINDOW_KEYS: Final = 2_000
_KEEP_PER_KEY: Final = 1.0 - 1.0 / _WINDOW_KEYS
_ALWAYS_BELOW: Final = 32  # keys: reads this small always consult (see above)


class CacheBypass:
    """Per view, the recent key hit rate of consulted reads; per read, consult or skip."""

    __slots__ = ("_hits", "_looked", "_rate", "_skipped", "fills_per_round_trip", "probe_every")

    def __init__(self, fills_per_round_trip: int, probe_every: int = 64) -> None:
        if fills_per_round_trip < 0:
            raise ValueError("fills_per_round_trip must be 0 (always consult) or positive")
        if probe_every < 1:
            raise ValueError("probe_every must be positive")
        self.fills_per_round_trip = fills_per_round_trip
        self.probe_every = probe_every
        self._hits: dict[str, float] = {}
        self._looked: dict[str, float] = {}
        self._rate: dict[str, float] = {}
        self._skipped = 0

    def consults(self, queries: Sequence[ViewQuery]) -> bool:
        """Whether this read should consult the cache (False: read every key from the store)."""
        per_trip = self.fills_per_round_trip
        if per_trip == 0 or sum(len(q.keys) for q in queries) < _ALWAYS_BELOW:
            return True
        chance, misses = 1.0, 0.0
        rate = self._rate
        for q in queries:
            h, k = rate.get(q.view.name, 1.0), len(q.keys)
            chance *= h**k
            misses += k * (1.0 - h)
        if chance * per_trip >= misses:
            return True
        self._skipped += 1
        return self._skipped % self.probe_every == 0

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
        """The view's recent key hit rate (1.0 before any consulted read)."""
        return self._rate.get(view, 1.0)
