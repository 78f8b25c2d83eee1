"""Sampling served values for drift tests, on the hot path: a fixed small cost.

One join in ``every`` on average is sampled (``due``): a counter against a gap drawn at
random once per sampled join, uniform on [1, 2 * every - 1] (no fixed period for
periodic traffic to alias with). A sampled join hands the sampler (``take``) each view's
merged columns over the view's *distinct* keys, which the merge holds before it maps
them back to rows: a key that a request repeats over its rows (a ranking request: one
user, 100 candidate items) is one value, not 100 copies of it. The sampler appends at
most ``per_request`` values of each stored feature read to that feature's window, from
keys spread evenly over the view's distinct keys from a random start, wrapping past the
end (every position equally likely: ``_rows``): an ``itemgetter`` and ``list.extend``, C loops, no
per-row Python bytecode, no numpy call (converting each slice into a preallocated numpy
window measured 8x slower, 139 against 16 µs per sampled join of 16 features,
benchmarks/drift.py). The other joins cost one increment and one compare. A sampled
row its view had no value for (not PRESENT: served null like a stored null) is
``ABSENT`` in the windows, found from the view's statuses: per-row Python over the
sampled rows only, and only for a view that has such rows in this join.
A window holds the values of one data version: when the served version changes, the
partial window is dropped (its values belong to the old reference). A full window (nulls
included: the monitor tests their share and drops them from the values' test, off the
hot path) is handed to the monitor (``on_full``) and a new one starts.

Memory is bounded: one window of at most ``window`` values per (view layout, feature)
the process serves.
"""

from __future__ import annotations

import operator
import random
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, NamedTuple

from featurestore.model import FeatureView, Status
from featurestore.outcomes import ViewOutcome
from featurestore.plan import JoinPlan, ServingState
from featurestore.quality.profile import CATEGORICAL, NUMERIC

_ALL = operator.itemgetter(slice(None))  # a batch no larger than per_request: every row
PRESENT = Status.PRESENT


class _Absent:
    """A sampled row whose view read no value for it (NOT_FOUND, OUTSIDE_MAX_AGE,
    UNAVAILABLE): served null like a stored null, but not the feature's value."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "ABSENT"


ABSENT: Any = _Absent()


class Window(NamedTuple):
    view: FeatureView
    feature: str
    categorical: bool
    data_version: int
    values: list[Any]  # as served, None for a stored null; ABSENT for a row not PRESENT


class _Ring:
    __slots__ = ("categorical", "feature", "rest_until", "values", "version", "view")

    def __init__(self, view: FeatureView, feature: str, categorical: bool) -> None:
        self.view = view
        self.feature = feature
        self.categorical = categorical
        self.values: list[Any] = []
        self.version = -1
        self.rest_until = 0.0  # no sampling before (clock time): see DriftSampler's min_interval


class DriftSampler:
    def __init__(
        self,
        on_full: Callable[[Window], None],
        *,
        on_retire: Callable[[set[tuple[str, str]]], None] | None = None,
        on_watch: Callable[[str, str], None] | None = None,
        every: int = 10,
        per_request: int = 10,
        window: int = 1000,
        seed: int | None = None,
        min_interval: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``min_interval``: seconds a feature's window rests after it is handed over. A
        test costs ~0.2 ms in a worker thread beside the serving loop; at 2,000 batch-100
        joins/s a window of every feature filled twice a second, and the tests (and the
        thread handing the GIL back and forth) cost 12-15% of the server's CPU
        (benchmarks/drift.py, 2026-12-04). Resting, a feature is not sampled at all."""
        if every < 1 or per_request < 1 or window < 1:
            raise ValueError("every, per_request and window must be >= 1")
        if min_interval < 0:
            raise ValueError("min_interval must be >= 0")
        self.on_full = on_full
        self.on_retire = on_retire  # keep_only's (view, layout) served: the monitor's gauges follow
        self.on_watch = on_watch  # (view, feature) of each window made: the monitor's counters start at 0
        self.every = every
        self.per_request = per_request
        self.window = window
        self.min_interval = min_interval
        self._clock = clock
        self._count = 0
        self._random = random.Random(seed)
        self._gap = self._next_gap()
        self._offsets: dict[int, list[int]] = {}  # batch size -> the rows taken from a start of 0
        self._rings: dict[tuple[str, str, int], _Ring | None] = {}
        self._bound: dict[int, tuple[JoinPlan, list[tuple[str, list[_Ring | None]]]]] = {}

    def observe(
        self,
        state: ServingState,
        plan: JoinPlan,
        gathered: Sequence[Sequence[Sequence[Any]]],
        outcomes: Sequence[ViewOutcome] | None = None,
    ) -> None:
        """One join: counted, and sampled when due (``due``, then ``take``; the engine calls
        them apart, to hand ``take`` its views' distinct keys on sampled joins only)."""
        if self.due():
            self.take(state, plan, gathered, outcomes)

    def due(self) -> bool:
        """Count a join: True when it is sampled (the others cost one increment and one
        compare)."""
        self._count += 1
        if self._count < self._gap:
            return False
        self._count = 0
        self._gap = self._next_gap()
        return True

    def take(
        self,
        state: ServingState,
        plan: JoinPlan,
        gathered: Sequence[Sequence[Sequence[Any]]],
        outcomes: Sequence[ViewOutcome] | None = None,
    ) -> None:
        """Sample one join (``gathered[slot][j]``: the values of
        ``plan.views[slot].features[j]``, None where not PRESENT; ``outcomes[slot]``: that
        view's statuses, which tell a stored null from a row the view has no value for;
        without them every row counts as PRESENT). The engine hands each view's columns
        over its distinct keys, so a key repeated over a request's rows (one user and 100
        candidate items) enters once: 10 copies of one user's values in a window made the
        tests take them for 10 independent values (review s57)."""
        bound = self._bound.get(id(plan))
        if bound is None or bound[0] is not plan:  # plans are cached per snapshot: bound once
            bound = self._bind(plan)
        window, versions, now = self.window, state.data_versions, self._clock()
        take: Callable[[Sequence[Any]], Any] = _ALL  # the rows to take of views of `rows` keys
        rows = -1
        for slot, ((name, rings), cols) in enumerate(zip(bound[1], gathered, strict=False)):
            if not cols:
                continue
            if len(cols[0]) != rows:  # (views keyed alike share the draw)
                rows = len(cols[0])
                take = self._rows(rows)
            version = versions.get(name, 0)
            absent = _absent(take, outcomes[slot]) if outcomes is not None else None
            for ring, col in zip(rings, cols, strict=True):
                if ring is None or ring.rest_until > now:
                    continue
                if ring.version != version:
                    ring.version, ring.values = version, []
                buf = ring.values
                if absent:  # (rows not PRESENT in this sample: a few, on sampled joins only)
                    taken = list(take(col))
                    for i in absent:
                        taken[i] = ABSENT
                    buf.extend(taken)
                else:
                    buf.extend(take(col))
                if len(buf) >= window:
                    self._full(ring, buf)
                    ring.rest_until = now + self.min_interval

    def _next_gap(self) -> int:
        """Joins until the next sample: uniform on [1, 2 * every - 1] (mean ``every``),
        drawn once per sampled join. A fixed gap aliases with periodic traffic: callers
        that alternate two services were sampled on one of them only (every even gap)."""
        return self._random.randint(1, 2 * self.every - 1)

    def _rows(self, n: int) -> Callable[[Sequence[Any]], Any]:
        """Which of ``n`` rows to take (a C-level getter, applied to every column):
        ``per_request`` rows spread evenly over them, ``(start + k * n // m) % n``,
        from a start drawn uniformly on [0, n) and wrapping past the end, so every row
        position is taken with the same probability m / n. Always the first rows would
        test the head of every batch only (callers that order their keys: a ranked
        candidate list, keys sorted by id); a start kept in [0, n - span] without wrapping
        took the middle rows every time and the edges rarely."""
        m = self.per_request
        if n <= m:
            return _ALL
        start = self._random.randrange(n)
        if m == 1:
            return operator.itemgetter(slice(start, start + 1))
        offsets = self._offsets.get(n)
        if offsets is None:  # computed once per batch size
            if len(self._offsets) > 1024:
                self._offsets.clear()
            offsets = self._offsets[n] = [k * n // m for k in range(m)]
        return operator.itemgetter(*[(start + o) % n for o in offsets])

    def _bind(self, plan: JoinPlan) -> tuple[JoinPlan, list[tuple[str, list[_Ring | None]]]]:
        """The windows of every column a plan reads, in its order."""
        if len(self._bound) > 1024:
            self._bound.clear()
        rings = [(vp.view.name, [self._ring(vp.view, fi) for fi in vp.features]) for vp in plan.views]
        bound = self._bound[id(plan)] = (plan, rings)
        return bound

    def _ring(self, view: FeatureView, fi: int) -> _Ring | None:
        key = (view.name, view.layout, fi)
        if key in self._rings:
            return self._rings[key]
        feature = view.features[fi]
        ring = None
        # A stream view has no reference profile (nothing materializes it): its windows
        # would only ever be skipped as no_reference (docs/quality.md).
        if view.stream is None and (feature.dtype in NUMERIC or feature.dtype in CATEGORICAL):
            ring = _Ring(view, feature.name, feature.dtype in CATEGORICAL)
            if self.on_watch is not None:
                self.on_watch(view.name, feature.name)
        self._rings[key] = ring
        return ring

    def watch(self, views: Iterable[FeatureView]) -> None:
        """Make the windows of every feature of ``views`` now (the runtime: at start and at
        each registry swap), not at a plan's first sampled join, so ``on_watch`` creates
        their counters at 0 long before a window is tested: ``increase()`` takes a series'
        first sample as its baseline, and a windows counter born at 1 (at busy times, a
        few seconds after the first sampled join) left its first window out of
        FeatureDrift's share (review s57)."""
        for view in views:
            for fi in range(len(view.features)):
                self._ring(view, fi)

    def _full(self, ring: _Ring, buf: list[Any]) -> None:
        ring.values = buf[self.window :] if not self.min_interval else []  # (a rest starts afresh)
        del buf[self.window :]
        self.on_full(Window(ring.view, ring.feature, ring.categorical, ring.version, buf))

    def keep_only(self, views: set[tuple[str, str]]) -> None:
        """Drop the windows of view layouts no longer served (after a registry swap), and
        tell ``on_retire`` (the monitor drops those layouts' drift gauges)."""
        for key in [k for k in self._rings if (k[0], k[1]) not in views]:
            del self._rings[key]
        self._bound.clear()  # plans of the old snapshot, and their windows
        if self.on_retire is not None:
            self.on_retire(views)


def _absent(take: Callable[[Sequence[Any]], Any], outcome: ViewOutcome) -> list[int] | None:
    """Positions, in this join's sample, of the rows the view has no value for."""
    if outcome.all_present:
        return None
    return [i for i, status in enumerate(take(outcome.statuses)) if status is not PRESENT]
