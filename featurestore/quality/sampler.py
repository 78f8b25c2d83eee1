"""Sampling served values for drift tests, on the hot path: a fixed small cost.

Every ``every``-th join (a counter, no random draw) hands the sampler its merged
columns; the sampler copies at most ``per_request`` values of each stored feature read
(a list slice, one ``numpy.array`` conversion, one slice assignment into a preallocated
ring: no per-row Python) into that feature's window. The other joins cost one increment
and one compare. A window holds the values of one data version: when the served version
changes, the partial window is dropped (its values belong to the old reference). A full
window is handed to the monitor (``on_full``) and the ring starts over.

Memory is bounded: one window per (view layout, feature) the process serves, 8 bytes a
value for numeric features, a pointer for categorical ones.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np

from featurestore.model import FeatureView
from featurestore.plan import JoinPlan, ServingState
from featurestore.quality.profile import CATEGORICAL, NUMERIC


class Window(NamedTuple):
    view: FeatureView
    feature: str
    categorical: bool
    data_version: int
    values: np.ndarray  # float64 (NaN dropped) or object (None dropped)


class _Ring:
    __slots__ = ("categorical", "feature", "n", "values", "version", "view")

    def __init__(self, view: FeatureView, feature: str, categorical: bool, size: int) -> None:
        self.view = view
        self.feature = feature
        self.categorical = categorical
        self.values = np.empty(size, dtype=object if categorical else np.float64)
        self.n = 0
        self.version = -1


class DriftSampler:
    def __init__(
        self, on_full: Callable[[Window], None], *, every: int = 10, per_request: int = 10, window: int = 1000
    ) -> None:
        if every < 1 or per_request < 1 or window < 1:
            raise ValueError("every, per_request and window must be >= 1")
        self.on_full = on_full
        self.every = every
        self.per_request = per_request
        self.window = window
        self._count = 0
        self._rings: dict[tuple[str, str, int], _Ring | None] = {}

    def observe(
        self, state: ServingState, plan: JoinPlan, gathered: Sequence[Sequence[Sequence[Any]]]
    ) -> None:
        """Called by the engine after every join's merge (``gathered[slot][j]``: the
        values of ``plan.views[slot].features[j]``, None where not PRESENT)."""
        self._count += 1
        if self._count < self.every:
            return
        self._count = 0
        m = self.per_request
        for vp, cols in zip(plan.views, gathered, strict=False):
            view = vp.view
            version = state.data_versions.get(view.name, 0)
            for fi, col in zip(vp.features, cols, strict=True):
                key = (view.name, view.layout, fi)
                ring = self._rings[key] if key in self._rings else self._ring(view, fi)
                if ring is not None:
                    self._add(ring, col[:m], version)

    def _ring(self, view: FeatureView, fi: int) -> _Ring | None:
        feature = view.features[fi]
        ring = None
        if feature.dtype in NUMERIC or feature.dtype in CATEGORICAL:
            ring = _Ring(view, feature.name, feature.dtype in CATEGORICAL, self.window)
        self._rings[(view.name, view.layout, fi)] = ring
        return ring

    def _add(self, ring: _Ring, values: Sequence[Any], version: int) -> None:
        if ring.version != version:
            ring.version, ring.n = version, 0
        if ring.categorical:
            arr = np.array(values, dtype=object)
            arr = arr[arr != None]  # noqa: E711 (elementwise, in numpy)
        else:
            arr = np.array(values, dtype=np.float64)  # None -> NaN
            arr = arr[~np.isnan(arr)]
        while len(arr):
            take = min(self.window - ring.n, len(arr))
            ring.values[ring.n : ring.n + take] = arr[:take]
            ring.n += take
            arr = arr[take:]
            if ring.n == self.window:
                self.on_full(Window(ring.view, ring.feature, ring.categorical, version, ring.values.copy()))
                ring.n = 0

    def keep_only(self, views: set[tuple[str, str]]) -> None:
        """Drop the windows of view layouts no longer served (after a registry swap)."""
        for key in [k for k in self._rings if (k[0], k[1]) not in views]:
            del self._rings[key]
