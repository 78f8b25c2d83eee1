"""Reference profiles: what a view's data version holds, per feature, for drift tests.

A profile is computed while a data version is written (materialization; the memory
store when it loads a view's file) and stored with that version in the view's store
(``ProfileStore`` in ``sources/base.py``), so a swap of data version swaps the reference.

* Numeric features (int64, float64, timestamp as epoch µs): a uniform random sample of
  up to ``SAMPLE_SIZE`` non-null values without replacement. Each value gets a uniform
  random key and the ``SAMPLE_SIZE`` smallest keys are kept (a reservoir, merged batch
  by batch with ``argpartition``: no per-row Python work). 5,000 values estimate the
  reference CDF to +-0.019 (DKW bound at 95%), well inside the KS critical distance of a
  1,000-value window at alpha 0.05 (0.047): the window, not the reference, limits power.
* Categorical features (string, bool): the count of each category over all rows
  (``pyarrow.compute.value_counts`` per batch), the ``MAX_CATEGORIES`` - 1 largest kept
  and the rest summed as ``OTHER`` (every count when there are at most
  ``MAX_CATEGORIES``). Every category is counted while a feature has at most
  ``MAX_COUNTED`` distinct values. When a batch brings it past, the ``MAX_COUNTED``
  counted most often so far (ties by name) go on being counted (``pyarrow.compute.index_in``:
  their counts stay exact) and the others are dropped. Their values, and every value of
  a category first seen later, go to a uniform random sample of up to
  ``REST_SAMPLE_SIZE`` (``_Reservoir``: random keys, the smallest kept, as for numeric
  features; the dropped counts enter it as if fed one by one). At ``build()`` a category
  that sample holds ``REST_MIN_SAMPLED`` times or more joins the counted ones, its count
  the sample's scaled to the values sampled from (a standard error of 7% or less), so a
  frequent category first seen late (a table ordered by the feature, or by a time its
  values follow) is still kept. The rest of the rows, whatever their category, are in
  ``OTHER``: the rows less the counts kept. So the kept counts are exact, but for those
  estimated ones, and no share is biased: windows drawn from the rows of a 12,000- or
  30,000-category feature are drifted at alpha 0.05 as often as with every category
  counted (3-8%). Limitation: a category the counting dropped (or first saw after it
  chose) that the sample holds fewer than ``REST_MIN_SAMPLED`` times (under about 0.4%
  of those values) is in ``OTHER``: tested as part of it, never wrongly, but a shift
  between it and the rest of ``OTHER`` goes unseen.
  Memory: at most ``MAX_COUNTED`` categories and one batch's distinct values, then the
  counted categories and up to twice ``REST_SAMPLE_SIZE`` sampled values (fed 1.5M
  distinct values in 50,000-row batches, peak RSS +47 MB). Before c26d878 every value
  was counted until ``build()`` (+434 MB there); c26d878's Misra-Gries counters took the
  same amount off every kept count, moving up to ~10% of the rows into ``OTHER``, and
  51-81% of such windows were drifted (review s55 round 2, finding 2).
* float32 vectors are not profiled.

The reference weighs every row (key) alike; served windows weigh keys by how often they
are asked for. Traffic that favours some keys (active users) shows as lasting drift of
unchanged data: docs/quality.md, next to the FeatureDrift alert.

Profiling never stops the write it rides on (a materialization, the memory store's
load): a feature whose values cannot be profiled is logged once, counted
(``featurestore_feature_profile_failures_total``) and left out of the profile, so its
windows are not tested (like a version without a profile) while every other feature's
are. Numeric values are cast to float64 unchecked: an int64 beyond 2**53 or a timestamp
in year 9999 loses precision in the sample, which a distribution test does not notice.

Serialized as zlib-compressed JSON with the samples as base64 little-endian float64
(about 40 KB per numeric feature).
"""

from __future__ import annotations

import base64
import json
import logging
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from featurestore.model import DType, FeatureView
from featurestore.quality import metrics
from featurestore.quality.stats import OTHER as OTHER  # beyond MAX_CATEGORIES (the tests map to it)

SAMPLE_SIZE = 5_000
MAX_CATEGORIES = 1_000
# Categories counted per categorical feature while a version is written: ten times what a
# profile keeps, so the kept ones are picked from many more. At most this many values plus
# one batch's distinct ones are held (about 2 MB at 200 B a value, against 190 B per
# distinct value of the whole table before c26d878).
MAX_COUNTED = 10 * MAX_CATEGORIES
# Past MAX_COUNTED, a uniform sample of the values outside the categories counted on (a
# category first seen late, in a table ordered by the feature or by a time it follows).
# One it holds REST_MIN_SAMPLED times or more joins the profile with its count estimated
# from the sample: a relative standard error of at most 1/sqrt(200) = 7%, so its bucket's
# variance grows by at most about 1,000 / 50,000 = 2% in a 1,000-value window; there can be
# at most 250 of them, and one near the bar is overestimated by under 0.8 standard errors
# (selected on the same sample). Rarer ones stay in OTHER. Every category taken from a
# 50,000-value sample instead (the 999 most frequent in it, scaled) made 28-42% of the
# windows drawn from the reference's own rows drifted for features of many similar
# categories: the chi-square test sorts the rare ones by their reference counts into
# groups, and sorted noisy counts make biased groups (review s55 round 2, fix-profile).
REST_SAMPLE_SIZE = 50_000
REST_MIN_SAMPLED = 200
NUMERIC = frozenset({DType.INT64, DType.FLOAT64, DType.TIMESTAMP})
CATEGORICAL = frozenset({DType.STRING, DType.BOOL})
FORMAT = 1
log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class FeatureProfile:
    name: str
    kind: str  # numeric | categorical
    count: int  # non-null values profiled
    sample: np.ndarray | None = None  # numeric: sorted float64 sample
    categories: dict[str, int] | None = None  # categorical: count per category

    def frequencies(self) -> dict[str, float]:
        total = sum((self.categories or {}).values())
        return {k: v / total for k, v in (self.categories or {}).items()} if total else {}


@dataclass(frozen=True, slots=True)
class Profile:
    view: str
    layout: str
    data_version: int
    rows: int
    features: dict[str, FeatureProfile] = field(default_factory=dict)

    def to_bytes(self) -> bytes:
        doc: dict[str, Any] = {
            "format": FORMAT,
            "view": self.view,
            "layout": self.layout,
            "data_version": self.data_version,
            "rows": self.rows,
            "features": [_feature_doc(f) for f in self.features.values()],
        }
        return zlib.compress(json.dumps(doc, separators=(",", ":")).encode(), 6)

    @staticmethod
    def from_bytes(raw: bytes) -> Profile:
        doc = json.loads(zlib.decompress(raw))
        if doc.get("format") != FORMAT:
            raise ValueError(f"unknown profile format {doc.get('format')!r}")
        features = {}
        for f in doc["features"]:
            sample = None
            if f.get("sample") is not None:
                sample = np.frombuffer(base64.b64decode(f["sample"]), dtype="<f8").copy()
            features[f["name"]] = FeatureProfile(
                f["name"], f["kind"], f["count"], sample, f.get("categories")
            )
        return Profile(doc["view"], doc["layout"], doc["data_version"], doc["rows"], features)


def _feature_doc(f: FeatureProfile) -> dict[str, Any]:
    doc: dict[str, Any] = {"name": f.name, "kind": f.kind, "count": f.count}
    if f.sample is not None:
        doc["sample"] = base64.b64encode(f.sample.astype("<f8").tobytes()).decode()
    if f.categories is not None:
        doc["categories"] = f.categories
    return doc


class ProfileBuilder:
    """Feed it the rows written into a data version (tables shaped by
    ``featurestore.rows.view_schema``), batch by batch; ``build()`` the profile."""

    def __init__(
        self, view: FeatureView, data_version: int, *, sample_size: int = SAMPLE_SIZE, seed: int | None = None
    ) -> None:
        self.view = view
        self.data_version = data_version
        self.sample_size = sample_size
        self.rows = 0
        seeds = np.random.SeedSequence(seed)
        self._rng = np.random.default_rng(seeds)  # the stream default_rng(seed) gives
        self._numeric = [f for f in view.features if f.dtype in NUMERIC]
        self._categorical = [f for f in view.features if f.dtype in CATEGORICAL]
        empty = np.empty(0, np.float64)
        self._keys: dict[str, np.ndarray] = {f.name: empty for f in self._numeric}
        self._values: dict[str, np.ndarray] = {f.name: empty for f in self._numeric}
        # every category's count until a feature passes MAX_COUNTED values (then None)...
        self._counts: dict[str, dict[str, int] | None] = {f.name: {} for f in self._categorical}
        # ...then the MAX_COUNTED categories counted on (as values of the column's type) and a
        # sample of the other values, drawn from a stream of its own (a numeric sample stays
        # the one a seed gave before)
        self._tracked: dict[str, tuple[pa.Array, np.ndarray]] = {}
        self._rest: dict[str, _Reservoir] = {}
        self._rest_rng = np.random.default_rng(seeds.spawn(1)[0])
        self._seen: dict[str, int] = {f.name: 0 for f in view.features}
        self._failed: set[str] = set()  # features whose values could not be profiled

    def add(self, table: pa.Table) -> None:
        """Profile one batch of written rows; never raises on the values (see the module doc)."""
        self.rows += table.num_rows
        for f in self._numeric:
            if f.name not in self._failed:
                self._guard(f.name, self._add_numeric, table, f.name, f.dtype)
        for f in self._categorical:
            if f.name not in self._failed:
                self._guard(f.name, self._add_categorical, table, f.name)

    def _add_numeric(self, table: pa.Table, name: str, dtype: DType) -> None:
        values = numeric_values(table.column(name), dtype)
        self._seen[name] += len(values)
        keys = np.concatenate([self._keys[name], self._rng.random(len(values))])
        values = np.concatenate([self._values[name], values])
        if len(keys) > self.sample_size:
            keep = np.argpartition(keys, self.sample_size)[: self.sample_size]
            keys, values = keys[keep], values[keep]
        self._keys[name], self._values[name] = keys, values

    def _add_categorical(self, table: pa.Table, name: str) -> None:
        values = table.column(name).drop_null()
        self._seen[name] += len(values)
        counts = self._counts[name]
        if counts is None:  # past MAX_COUNTED: the categories counted on, and the rest sampled
            tracked, tracked_counts = self._tracked[name]
            at = pc.index_in(values, value_set=tracked)
            found = at.drop_null().to_numpy()
            tracked_counts += np.bincount(found, minlength=len(tracked_counts))
            if len(found) < len(values):
                self._rest[name].add(values.filter(pc.is_null(at)))
            return
        for key, n in _value_counts(values):
            counts[key] = counts.get(key, 0) + n
        if len(counts) > MAX_COUNTED:  # count on the most frequent so far, sample the rest
            ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
            kept, rest = ranked[:MAX_COUNTED], dict(ranked[MAX_COUNTED:])
            self._tracked[name] = (
                pa.array([key for key, _ in kept], type=values.type),
                np.array([n for _, n in kept], dtype=np.int64),
            )
            self._rest[name] = _Reservoir.of_counts(rest, REST_SAMPLE_SIZE, self._rest_rng, values.type)
            self._counts[name] = None

    def _guard(self, name: str, step: Any, *args: Any) -> None:
        try:
            step(*args)
        except Exception as e:
            self._failed.add(name)
            metrics.PROFILE_FAILURES.labels(self.view.name, name).inc()
            log.warning(
                "%s v%d: feature %s not profiled (its drift windows are not tested): %s: %s",
                self.view.name, self.data_version, name, type(e).__name__, e,
            )  # fmt: skip

    def build(self) -> Profile:
        """The profile of every row added, without the features that could not be profiled."""
        features: dict[str, FeatureProfile] = {}
        for f in self._numeric:
            if f.name not in self._failed:
                features[f.name] = FeatureProfile(
                    f.name, "numeric", self._seen[f.name], np.sort(self._values[f.name])
                )
        for f in self._categorical:
            if f.name not in self._failed:
                seen, counts = self._seen[f.name], self._counts[f.name]
                if counts is None:
                    tracked, tracked_counts = self._tracked[f.name]
                    counts = dict(zip(tracked.to_pylist(), tracked_counts.tolist(), strict=True))
                    counts.update(self._rest[f.name].frequent(REST_MIN_SAMPLED))
                features[f.name] = FeatureProfile(f.name, "categorical", seen, categories=_top(counts, seen))
        return Profile(self.view.name, self.view.layout, self.data_version, self.rows, features)


def numeric_values(col: pa.ChunkedArray | pa.Array, dtype: DType) -> np.ndarray:
    """Non-null values of a numeric column as float64 (timestamps as epoch µs). The cast is
    unchecked: integers beyond 2**53 (ids, year-9999 timestamps) round to the nearest
    float64, which is precision enough for a distribution's sample."""
    if dtype is DType.TIMESTAMP:
        col = col.cast(pa.int64(), safe=False)
    arr = col.cast(pa.float64(), safe=False).to_numpy(zero_copy_only=False)
    out: np.ndarray = np.asarray(arr, dtype=np.float64)
    kept: np.ndarray = out[~np.isnan(out)]
    return kept


def category_name(value: Any) -> str:
    """How a category is named in profiles and windows (bools as true/false)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _value_counts(values: pa.Array | pa.ChunkedArray) -> Iterator[tuple[str, int]]:
    """(category, count) of each distinct value (two lists, not a dict per value)."""
    counts = pc.value_counts(values)
    return zip(
        map(category_name, counts.field("values").to_pylist()),
        counts.field("counts").to_pylist(),
        strict=True,
    )


def _top(counts: dict[str, int], seen: int) -> dict[str, int]:
    """The ``MAX_CATEGORIES`` - 1 largest counts and ``OTHER`` for the rest of the ``seen``
    values, or every count when there are no more and none was cut."""
    if len(counts) <= MAX_CATEGORIES and sum(counts.values()) == seen:
        return dict(counts)
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    kept = dict(ranked[: MAX_CATEGORIES - 1])
    kept[OTHER] = kept.get(OTHER, 0) + seen - sum(kept.values())
    return kept


class _Reservoir:
    """A uniform random sample without replacement of up to ``size`` of the values added:
    each value gets a uniform random key and the ``size`` smallest keys are kept. The
    values are held until there are ``2 * size``, then cut back to the ``size`` smallest
    keys (``argpartition``); from then on a value whose key is at or above the largest one
    kept (``bound``) is not held, as it can never be kept: about size * (1 + ln(values /
    size)) of the values fed are ever held. No per-value Python work."""

    def __init__(self, size: int, rng: np.random.Generator) -> None:
        self.size = size
        self._rng = rng
        self._keys: list[np.ndarray] = []
        self._values: list[pa.Array] = []
        self._type: pa.DataType = pa.string()
        self._held = 0
        self._bound = 1.0
        self.seen = 0  # values fed

    @classmethod
    def of_counts(
        cls, counts: dict[str, int], size: int, rng: np.random.Generator, kind: pa.DataType
    ) -> _Reservoir:
        """The reservoir as it would be had it been fed the ``counts``' values one by one
        (the same distribution): a uniform sample of min(size, total) of them (multivariate
        hypergeometric), with the keys of the smallest ``size`` of ``total`` uniform ones:
        the largest ~ Beta(size, total - size + 1), the others uniform below it."""
        colors = np.fromiter(counts.values(), dtype=np.int64, count=len(counts))
        total = int(colors.sum())
        m = min(size, total)
        if total < 10**9:  # the limit of numpy's "marginals" method
            drawn = rng.multivariate_hypergeometric(colors, m)
        else:  # with replacement: m / total < 1e-4 of the values could be drawn twice
            drawn = rng.multinomial(m, colors / total)
        names = np.array(list(counts), dtype=object)
        reservoir = cls(size, rng)
        reservoir._type = kind
        keys = rng.random(m)
        if total > size:
            reservoir._bound = float(rng.beta(size, total - size + 1))
            keys *= reservoir._bound
            keys[rng.integers(m)] = reservoir._bound
        reservoir._keys = [keys]
        reservoir._values = [pa.array(np.repeat(names, drawn), type=kind)]
        reservoir._held = m
        reservoir.seen = total
        return reservoir

    def add(self, values: pa.ChunkedArray) -> None:
        self._type = values.type
        self.seen += len(values)
        keys = self._rng.random(len(values))
        if self._bound < 1.0:
            at = np.flatnonzero(keys < self._bound)
            keys, values = keys[at], values.take(pa.array(at))
        self._keys.append(keys)
        self._values.extend(values.chunks)
        self._held += len(keys)
        if self._held >= 2 * self.size:
            self._compact()

    def _compact(self) -> None:
        keys = np.concatenate(self._keys) if self._keys else np.empty(0, np.float64)
        values = pa.chunked_array(self._values, type=self._type).combine_chunks()
        if len(keys) > self.size:
            keep = np.argpartition(keys, self.size - 1)[: self.size]
            keys, values = keys[keep], values.take(pa.array(keep))
            self._bound = float(keys.max())
        self._keys, self._values, self._held = [keys], [values], len(keys)

    def values(self) -> pa.Array:
        """The sample (its order is not meaningful)."""
        self._compact()
        return self._values[0]

    def frequent(self, at_least: int) -> dict[str, int]:
        """The categories the sample holds ``at_least`` times, each with its count scaled
        to the values fed (rounded down)."""
        sample = self.values()
        return {key: n * self.seen // len(sample) for key, n in _value_counts(sample) if n >= at_least}


def profile_table(
    view: FeatureView, data_version: int, table: pa.Table, *, seed: int | None = None
) -> Profile:
    """The profile of one table of rows (the memory store's loaded file)."""
    builder = ProfileBuilder(view, data_version, seed=seed)
    builder.add(table)
    return builder.build()
