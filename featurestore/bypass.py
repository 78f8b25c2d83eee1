"""When a read goes past the row cache: a read consults the cache only while the round
trip it may save is worth the fills it will pay for.

A read that consults the cache looks every key up, asks the store for the misses and
caches them. With every key cached it saves the round trip to the store (107-159 µs of
server CPU per join on loopback Redis at batch 1); with even one miss it pays the round
trip anyway, plus per missed key what consulting costs all told (lookup, the store query
of the misses, fill, admission, merging: 11.6-18.8 µs; the fill alone 1.7-6.2). Measured by
`python -m benchmarks.cache_cost` (benchmarks/RESULTS.md). A batch-100 join of uniform keys (two views, ~92%
of keys cached) almost never hits in full and pays ~16 fills: such joins cost 14% to 73%
more CPU with the cache than without it (benchmarks/RESULTS.md at commit 42e8888).

So a read of n keys consults the cache only while

    P(full hit) x fills_per_round_trip >= expected misses

with P(full hit) the product over its views of h ** k and the expected misses the sum
of k x (1 - h) (h the view's recent key hit rate, k the read's keys of it);
``fills_per_round_trip`` is 6, the low end of the 6-9 missed keys a round trip was worth
in cache_cost's warmed table (2026-12-03; it was 30, from the fill alone): the cautious
side (a lower figure skips the cache sooner). Otherwise it goes to the store for every
key and fills nothing.

Skipped reads fill nothing, so the hit rate they would see is not the one consulting
would reach: a hot set that consulting keeps cached looks cold to a cache nobody fills.
So once a view has been skipped for ``trial_every`` seconds (the cache TTL: rows it
filled before skipping have expired by then), the next read of it starts a **trial** of
that view: its reads consult again for a window of keys to load what they ask for (2,000
looked-up keys), then for another window that measures the hit rate afresh, and that
rate decides again. A trial gives up after ``trial_every``; a view read too rarely to
finish one (fewer than ~4,000 looked-up keys a TTL) is skipped since the trial began, so
the next trial starts at once: it stays on trials, i.e. consults, and its rate is not
updated (such a view costs little CPU either way). Reads of fewer than ``always_below``
(8) keys consult while the cache has room (``has_room``): a fill then evicts nothing, and
without them a cold cache would never warm for batch-1 traffic, which gains from it
(`benchmarks.cache_admission`); once it is full they follow the rule too (a review
measured batch-1 joins of uniform keys in a cache a tenth of the key space paying ~20%
more CPU for consulting it, where nearly every key missed). A view's rate
starts at ``unmeasured`` (1: a new view consults) and is per view name, shared by its
data versions and a canary's. A store across a network, where the round trip costs
latency more than CPU, is worth a higher figure; 0: every read consults.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Sequence
from typing import Final

from featurestore.sources.base import ViewQuery

# A view's hit rate weighs its last ~2,000 looked-up keys: batch-10 joins renew it every
# ~200 joins, batch-100 joins every ~20.
_WINDOW_KEYS: Final = 2_000
_KEEP_PER_KEY: Final = 1.0 - 1.0 / _WINDOW_KEYS
ALWAYS_BELOW: Final = 8  # keys: reads this small always consult (see above)


class _Trial:
    """A view's trial: keys left to load, then to measure, and when it gives up."""

    __slots__ = ("ends", "load", "measure")

    def __init__(self, ends: float) -> None:
        self.load = self.measure = float(_WINDOW_KEYS)
        self.ends = ends


class CacheBypass:
    """Per view, the recent key hit rate of consulted reads; per read, consult or skip."""

    __slots__ = (
        "_clock",
        "_hits",
        "_looked",
        "_rate",
        "_skipping_since",
        "_trials",
        "always_below",
        "fills_per_round_trip",
        "has_room",
        "skipped",
        "trial_every",
        "unmeasured",
    )

    def __init__(
        self,
        fills_per_round_trip: int,
        trial_every: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        unmeasured: float = 1.0,
        always_below: int = ALWAYS_BELOW,
        has_room: Callable[[], bool] | None = None,
    ) -> None:
        """``unmeasured``: the hit rate of a view before its first consulted read;
        ``has_room``: whether the cache can take a row without evicting one (None: small
        reads always consult)."""
        if fills_per_round_trip < 0:
            raise ValueError("fills_per_round_trip must be 0 (always consult) or positive")
        if trial_every <= 0:
            raise ValueError("trial_every must be positive")
        self.fills_per_round_trip = fills_per_round_trip
        self.trial_every = trial_every
        self.always_below = always_below
        self.unmeasured = unmeasured
        self.has_room = has_room
        self._clock = clock
        self._hits: dict[str, float] = {}
        self._looked: dict[str, float] = {}
        self._rate: dict[str, float] = {}
        self._skipping_since: dict[str, float] = {}
        self._trials: dict[str, _Trial] = {}
        self.skipped = 0  # reads sent past the cache

    def consults(self, queries: Sequence[ViewQuery]) -> bool:
        """Whether this read should consult the cache (False: read every key from the store)."""
        per_trip = self.fills_per_round_trip
        if per_trip == 0:
            return True
        if sum(len(q.keys) for q in queries) < self.always_below and (
            self.has_room is None or self.has_room()
        ):
            return True
        chance, misses = 1.0, 0.0
        rate, unmeasured = self._rate, self.unmeasured
        for q in queries:
            h, k = rate.get(q.view.name, unmeasured), len(q.keys)
            chance *= h**k
            misses += k * (1.0 - h)
        since = self._skipping_since
        if chance * per_trip >= misses:
            if since:
                for q in queries:
                    since.pop(q.view.name, None)
            return True
        return self._trial(queries)

    def _trial(self, queries: Sequence[ViewQuery]) -> bool:
        """The rule would skip this read: consult anyway if one of its views is on trial,
        or has been skipped for ``trial_every`` (its trial starts)."""
        now = self._clock()
        since, trials = self._skipping_since, self._trials
        on_trial = False
        for q in queries:
            name = q.view.name
            trial = trials.get(name)
            if trial is not None and now >= trial.ends:
                del trials[name]  # it gave up: a view read too rarely to measure
                trial = None
            if trial is None and now - since.setdefault(name, now) >= self.trial_every:
                trials[name] = trial = _Trial(now + self.trial_every)
                since[name] = now  # skipping counts from here: a trial that gives up is followed at once
            on_trial = on_trial or trial is not None
        if not on_trial:
            self.skipped += 1
        return on_trial

    def observe(self, view: str, hits: int, looked: int) -> None:
        """A consulted read of ``view`` found ``hits`` of its ``looked`` keys cached."""
        if looked <= 0:
            return
        trial = self._trials.get(view)
        if trial is not None:
            if trial.load > 0:
                trial.load -= looked
                if trial.load <= 0:  # loaded: measure from here, without the loading misses
                    self._hits[view] = self._looked[view] = 0.0
                return
            trial.measure -= looked
            if trial.measure <= 0:
                del self._trials[view]
        keep = _KEEP_PER_KEY**looked
        h = self._hits.get(view, 0.0) * keep + hits
        n = self._looked.get(view, 0.0) * keep + looked
        self._hits[view], self._looked[view] = h, n
        self._rate[view] = h / n

    def hit_rate(self, view: str) -> float:
        """The view's recent key hit rate (``unmeasured`` before any consulted read)."""
        return self._rate.get(view, self.unmeasured)

    def keep_only(self, views: Collection[str]) -> None:
        """Forget the state of views no longer served (the registry dropped them)."""
        for table in (self._rate, self._hits, self._looked, self._skipping_since, self._trials):
            for gone in [v for v in table if v not in views]:
                del table[gone]
