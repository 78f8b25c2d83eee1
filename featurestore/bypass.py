"""When a read goes past the row cache: a read consults the cache only while the round
trip it may save is worth the fills it will pay for.

A read that consults the cache looks every key up, asks the store for the misses and
caches them. With every key cached it saves the round trip to the store; with even one
miss it pays the round trip anyway, plus per missed key what consulting costs all told
(lookup, the store query of the misses, fill, admission, merging). So a read of n keys
consults the cache only while

    P(full hit) x fills_per_round_trip >= expected misses

with P(full hit) the product over its views of h ** k and the expected misses the sum
of k x (1 - h) (h the view's recent key hit rate, k the read's keys of it);
``fills_per_round_trip`` is what a round trip is worth in missed keys. It depends on the
store: factories.py picks it by kind and says how it was measured (Redis 0.5, ClickHouse
50). Otherwise the read goes to the store for every key and fills nothing.

Skipped reads fill nothing, so the hit rate they would see is not the one consulting would
reach: a hot set that consulting keeps cached looks cold to a cache nobody fills. So once a
view has been skipped for ``trial_every`` seconds (the cache TTL: rows it filled before
skipping have expired by then), the next read of it starts a **trial** of that view: its reads
still go to the store for every key, as when skipped, and one key in 32 (by a hash salted per
trial and mixed, not by the key's residue) is also looked up in the cache and, missed, filled
from the store's answer: every read of a sampled key is, so their hit rate is the one
consulting would reach while the working set fits. Its cost: a hash per key, a lookup and
maybe a fill per sampled key, and, when a sampled key missed, every feature of the view asked
of the store for the read's keys (a cached row is a whole row; one query, not a second for the
few: CachedSource._read_trial). It loads a window of 500 sampled keys, then measures the hit
rate in windows of 500 sampled keys until a TTL has passed (before that no row the trial
loaded has expired: the rate climbs a warm-up curve above where consulting settles, e.g. 86%
against 67% for uniform keys read twice over per TTL) and for as long as it keeps rising (a
skewed workload's hot set warming up), at most two TTLs. The rule then uses the trial's rate
for a TTL (a rate that sends every read of the view past the cache is the view's own at once:
no read of it consults meanwhile), while the reads it lets consult every key fill what the
trial did not sample and the view's own rate measures them; after that the view's own rate decides (a trial overstates
a working set larger than the cache: its sample fits where the whole does not; that period
undoes it). A trial that ends skipping doubles the wait before the next (counted from its end,
up to 16 periods), and the wait is reset only once the rule itself (not a trial's verdict) has
kept consulting the view for a period. A trial that ends without a whole window (a view read
too rarely, or whose hot keys fell outside its sample) lets the rule consult the view for a
period, as a trial measuring 100% would, its backoff kept; then its own rate decides (a rare
view costs little CPU either way; its hot set fills). Reads of every size follow the rule; a
cold cache warms through trials (why: docs/storage.md). A view's rate starts at ``unmeasured``
(1: a new view consults), its first consulted keys weighed against ``_PRIOR_KEYS`` keys at
that rate, and is per view name, shared by its data versions and a canary's. 0: every read
consults. A view whose rate alone sends every read of it past the cache (``_cold``) is
**quiet** until its next trial or its trial's end: a read of quiet views only is decided
without the rule, as is a read of the views and key counts of one the rule skipped while none
of their rates, trials or backoffs changed (the same verdict, cheaper: test_cache_bypass_quiet).
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable, Collection, Hashable, Sequence
from typing import Final

from featurestore.sources.base import ViewQuery
from featurestore.trial import TRIAL_WINDOW, Trial, key_hashes

# A view's hit rate weighs its last ~2,000 looked-up keys: batch-10 joins renew it every
# ~200 joins, batch-100 joins every ~20.
_WINDOW_KEYS: Final = 2_000
_KEEP_PER_KEY: Final = 1.0 - 1.0 / _WINDOW_KEYS
# A view's first consulted keys weigh against this many at ``unmeasured`` (one miss of a cold
# cache set the rate to 0). 64: at 0.5 a one-key read skips after 32 misses, a two-view one
# whose views both miss after 14 each (at ClickHouse's 50: after 1,911 and 271).
_PRIOR_KEYS: Final = 64
_MAX_QUIET_READS: Final = 1024  # read shapes held (~200 B each; a batch-100 read: ~100 key counts)
MAX_BACKOFF: Final = 4  # doublings of the wait between trials that end skipping: 16 periods
# What consults() answers: read past the cache, consult it for every key, or read past it
# measuring the sampled keys of its views on trial (CachedSource._read_trial).
SKIP: Final = 0
CONSULT: Final = 1
TRIAL: Final = 2
DECISIONS: Final = ("skipped", "consulted", "trial")  # their names, by SKIP, CONSULT, TRIAL


class CacheBypass:
    """Per view, the recent key hit rate of consulted reads; per read, consult or skip."""

    __slots__ = (
        "_backoff",
        "_clock",
        "_consulting_since",
        "_hits",
        "_looked",
        "_per_trip",
        "_quiet",
        "_quiet_read_views",
        "_quiet_reads",
        "_quiet_trials",
        "_rate",
        "_salts",
        "_skipping_since",
        "_trial_every",
        "_trials",
        "_unmeasured",
        "_warming",
        "skipped",
        "tried",
    )

    def __init__(
        self,
        fills_per_round_trip: float,
        trial_every: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        unmeasured: float = 1.0,
    ) -> None:
        """``unmeasured``: the hit rate of a view before its first consulted read."""
        if trial_every <= 0:
            raise ValueError("trial_every must be positive")
        # Quiet views (``_cold``) until their next trial or its end (on trial: also in
        # ``_quiet_trials``): a read of them is decided at once, not by the rule (0.3 against
        # 0.9 µs per batch-1 read of two views in process, 2026-12-05); a new figure unquiets.
        self._quiet: dict[str, float] = {}
        # Reads the rule skips that no view's rate decides alone (two views at 0.7-0.83 hits),
        # by shape, (view, keys) per query, until the soonest next trial or trial-rate end of
        # their views or a change of one's rate, trial or backoff (timeit, 2026-12-06, a
        # batch-1 read of two such views: 1.14 µs by the rule, 0.51 by its shape).
        self._quiet_reads: dict[tuple[tuple[str, int], ...], float] = {}
        self._quiet_read_views: set[str] = set()  # the views of those shapes (or more)
        self._quiet_trials: set[str] = set()
        self.fills_per_round_trip = fills_per_round_trip  # (checked by its setter)
        self._trial_every = trial_every
        self._unmeasured = unmeasured
        self._clock = clock
        self._hits: dict[str, float] = {}
        self._looked: dict[str, float] = {}
        self._rate: dict[str, float] = {}
        self._skipping_since: dict[str, float] = {}
        self._trials: dict[str, Trial] = {}
        self._backoff: dict[str, int] = {}  # trials begun since the rule last kept consulting, capped
        self._consulting_since: dict[str, float] = {}  # views with a backoff the rule lets consult
        # views whose trial said consult: (until, the trial's rate), which the rule uses
        # meanwhile while the view's own rate measures the cache filling
        self._warming: dict[str, tuple[float, float]] = {}
        self._salts = itertools.count(1)
        self.skipped = 0  # reads sent past the cache
        self.tried = 0  # reads on trial: past the cache too, but for their sampled keys

    @property
    def fills_per_round_trip(self) -> float:
        return self._per_trip

    @fills_per_round_trip.setter
    def fills_per_round_trip(self, figure: float) -> None:
        """A new figure (benchmarks.cache_cost fills a cache with 0): quiet views judged again."""
        if figure < 0:
            raise ValueError("fills_per_round_trip must be 0 (always consult) or positive")
        self._per_trip = figure
        self._quiet.clear()
        self._quiet_reads.clear()
        self._quiet_trials.clear()

    @property
    def trial_every(self) -> float:
        return self._trial_every

    @property
    def unmeasured(self) -> float:
        return self._unmeasured

    def consults(self, queries: Sequence[ViewQuery]) -> int:
        """Whether this read should consult the cache: ``CONSULT`` (every key), ``TRIAL``
        (every key from the store, the sampled keys of its views on trial measured:
        ``samples``) or ``SKIP`` (0: every key from the store)."""
        per_trip = self._per_trip
        if per_trip == 0:
            return CONSULT
        quiet = self._quiet
        if quiet and queries:  # (no query at all: the rule consults)
            now = self._clock()
            for q in queries:  # (a query of no keys: the rule decides)
                if quiet.get(q.view.name, 0.0) <= now or not q.keys:
                    break
            else:
                if self._quiet_trials:
                    for q in queries:
                        if q.view.name in self._quiet_trials:
                            self.tried += 1
                            return TRIAL
                self.skipped += 1
                return SKIP
        shape = None
        if self._quiet_reads:
            shape = tuple([(q.view.name, len(q.keys)) for q in queries])
            if self._quiet_reads.get(shape, 0.0) > self._clock():
                self.skipped += 1
                return SKIP
        chance, misses, until = 1.0, 0.0, math.inf
        rate, unmeasured, warming = self._rate, self._unmeasured, self._warming
        for q in queries:
            h, k = rate.get(q.view.name, unmeasured), len(q.keys)
            if warming and q.view.name in warming:
                h = self._warm_rate(q.view.name, h)
                if q.view.name in warming:  # (its trial's rate: until then)
                    until = min(until, warming[q.view.name][0])
            chance *= h**k
            misses += k * (1.0 - h)
        if chance * per_trip >= misses:
            if self._skipping_since or self._backoff:
                self._consulting(queries)
            return CONSULT
        verdict, next_trial = self._trial(queries)
        if verdict == SKIP and queries and next_trial > -math.inf:
            if shape is None:
                shape = tuple([(q.view.name, len(q.keys)) for q in queries])
            if len(self._quiet_reads) >= _MAX_QUIET_READS:  # (key counts vary with the batch)
                self._quiet_reads.clear()
            self._quiet_reads[shape] = min(until, next_trial)
            self._quiet_read_views.update([name for name, _ in shape])
        return verdict

    def _warm_rate(self, view: str, rate: float) -> float:
        """The rate the rule uses for a view whose trial said consult: the trial's until
        a period has passed (consulting meanwhile fills what it did not sample), then the
        view's own, measured over that period's full consults."""
        until, trial_rate = self._warming[view]
        if self._clock() < until:
            return trial_rate
        del self._warming[view]
        return rate

    def sampler(self, view: str) -> Callable[[Hashable], bool] | None:
        """On trial, which of the view's keys are looked up (None: not on trial)."""
        trial = self._trials.get(view)
        return None if trial is None else trial.sampled

    def samples(self, queries: Sequence[ViewQuery]) -> dict[int, list[int]] | None:
        """Per query (by index) of a view on trial, the positions of its keys looked up (None: none)."""
        trials, out = self._trials, None
        hashed_keys: Sequence[Hashable] | None = None  # views keyed alike share a key list
        hashed = None
        for qi, q in enumerate(queries):
            trial = trials.get(q.view.name)
            if trial is None:
                continue
            if q.keys is not hashed_keys:
                hashed_keys, hashed = q.keys, key_hashes(q.keys)
            if at := trial.positions(q.keys, hashed):
                if out is None:
                    out = {}
                out[qi] = at
        return out

    def _consulting(self, queries: Sequence[ViewQuery]) -> None:
        """The rule consults: its views are no longer skipping, and a view's backoff ends
        once the rule has kept consulting it for a period (so a rate that flips between
        consulting and skipping does not undo the backoff at every flip)."""
        now = self._clock()
        since, backoff, consulting = self._skipping_since, self._backoff, self._consulting_since
        for q in queries:
            name = q.view.name
            since.pop(name, None)
            self._unquiet(name)  # (a query of none of its keys: the rule consults)
            if name not in backoff or name in self._warming or name in self._trials:
                continue  # a trial's verdict held for a period is not the rule consulting
            if now - consulting.setdefault(name, now) >= self._trial_every:
                del backoff[name], consulting[name]

    def _trial(self, queries: Sequence[ViewQuery]) -> tuple[int, float]:
        """The rule would skip this read: ``TRIAL`` if one of its views is on trial, or has
        been skipped long enough for its next trial (which starts), else ``SKIP``; with the
        soonest next trial of its views (-inf where this read ended or began one)."""
        now = self._clock()
        since, trials, backoff = self._skipping_since, self._trials, self._backoff
        on_trial, soonest = False, math.inf
        for q in queries:
            name = q.view.name
            self._consulting_since.pop(name, None)
            trial = trials.get(name)
            if trial is not None and now >= trial.ends:
                del trials[name]
                soonest = -math.inf
                if trial.prev < 0:  # no whole window: the rule consults it for a period
                    since.pop(name, None)  # (its backoff kept: only the rule consulting ends it)
                    self._measured(name, _PRIOR_KEYS, _PRIOR_KEYS, now)  # (as at 100%)
                    continue
                self._measured(name, trial.prev * TRIAL_WINDOW, TRIAL_WINDOW, now)  # still rising
                since[name] = now
                trial = None
            if trial is None:
                wait = self._trial_every * (1 << backoff.get(name, 0))
                began = since.setdefault(name, now)
                if now >= began + wait:  # (as the quiet views' until: the same float)
                    trials[name] = trial = Trial(now, self._trial_every, next(self._salts))
                    backoff[name] = min(backoff.get(name, 0) + 1, MAX_BACKOFF)
                    soonest = -math.inf
                else:
                    soonest = min(soonest, began + wait)
                    self._quiet_trials.discard(name)
                    if q.keys and self._cold(name):
                        self._quiet[name] = began + wait  # (its next trial)
            if trial is not None and q.keys and self._cold(name):
                self._quiet[name] = trial.ends  # (observe() ends it sooner, unquieting it)
                self._quiet_trials.add(name)
            on_trial = on_trial or trial is not None
        if not on_trial:
            self.skipped += 1
            return SKIP, soonest
        self.tried += 1
        return TRIAL, soonest

    def _unquiet(self, view: str) -> None:
        """A change of the view's rate, skipping or backoff: no quiet verdict holds for it."""
        self._quiet.pop(view, None)
        if view in self._quiet_read_views:
            self._quiet_reads.clear()
            self._quiet_read_views.clear()
        self._quiet_trials.discard(view)

    def _cold(self, view: str) -> bool:
        """Whether the view's rate alone sends every read of it past the cache: with
        ``h x fills_per_round_trip < 1 - h``, a read of k >= 1 of its keys has
        ``P(full hit) <= h ** k <= h`` and ``expected misses >= k x (1 - h) >= 1 - h``,
        whatever its other views. Not while a trial's rate decides for it (``_warming``:
        the rule then uses that rate, not the view's own)."""
        if view in self._warming:
            return False
        h = self._rate.get(view, self._unmeasured)
        return h * self._per_trip < 1.0 - h

    def observe(self, view: str, hits: int, looked: int, sampled: bool = False) -> None:
        """A consulted read of ``view`` found ``hits`` of its ``looked`` keys cached
        (``sampled``: a trial's read, of its sampled keys)."""
        if looked <= 0:
            return
        trial = self._trials.get(view)
        if trial is not None and not sampled and self._clock() >= trial.ends:
            del self._trials[view]  # over, and the rule consults the view: these reads measure it
            trial = None  # (only a skipped read ended it: with none, it stayed on trial for ever)
        if trial is not None:
            if not sampled:  # a read the rule let consult every key: not the trial's measure
                return
            if trial.load > 0:  # loading: its misses are not measured
                trial.load -= looked
                return
            trial.hits += hits
            trial.left -= looked
            if trial.left > 0:
                return
            n = TRIAL_WINDOW - trial.left
            rate = trial.hits / n
            now = self._clock()
            # Another window while its rows have not started expiring (the rate before
            # that is a warm-up curve above the steady state), or while it still rises.
            if (now < trial.settled or rate > trial.prev) and now < trial.ends:
                trial.prev, trial.hits, trial.left = rate, 0.0, float(TRIAL_WINDOW)
                return
            del self._trials[view]
            self._measured(view, trial.hits, n, now)  # the rate from here is the last window's
            self._skipping_since[view] = now  # the wait for the next trial counts from here
            return
        self._unquiet(view)  # (not while quiet: no read of it consults)
        keep = _KEEP_PER_KEY**looked
        n0 = self._looked.get(view)
        h0 = self._unmeasured * _PRIOR_KEYS if n0 is None else self._hits[view]
        h = h0 * keep + hits
        n = (_PRIOR_KEYS if n0 is None else n0) * keep + looked
        self._hits[view], self._looked[view] = h, n
        self._rate[view] = h / n

    def _measured(self, view: str, hits: float, looked: float, now: float) -> None:
        """A trial's rate, which the rule uses for a period: reads consulting every key
        after a trial first miss what it did not sample (which dragged a hot set it measured
        at 100% below the line at once), while the view's own rate measures them; a trial
        that overstated (a working set larger than the cache) is undone after that period.
        A ``_cold`` rate has none (no read of the view consults): quiet from its next read."""
        self._hits[view], self._looked[view] = hits, looked
        self._rate[view] = hits / looked
        self._unquiet(view)
        self._warming.pop(view, None)  # (_cold is False while a view warms)
        if not self._cold(view):
            self._warming[view] = (now + self._trial_every, hits / looked)

    def hit_rate(self, view: str) -> float:
        """The view's recent key hit rate (``unmeasured`` before any consulted read)."""
        return self._rate.get(view, self._unmeasured)

    def keep_only(self, views: Collection[str]) -> None:
        """Forget the state of views no longer served (the registry dropped them)."""
        for table in (
            self._rate,
            self._hits,
            self._looked,
            self._skipping_since,
            self._trials,
            self._backoff,
            self._consulting_since,
            self._warming,
            self._quiet,
        ):
            for gone in [v for v in table if v not in views]:
                del table[gone]
        self._quiet_trials &= set(views)
        self._quiet_reads.clear()
