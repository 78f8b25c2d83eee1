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
* Categorical features (string, bool): the count of every category over all rows
  (``pyarrow.compute.value_counts`` per batch), the ``MAX_CATEGORIES`` most frequent
  kept and the rest summed as ``OTHER``. Counted in bounded memory, ``MAX_COUNTED``
  counters a feature (Misra-Gries): when a batch brings the distinct values past it,
  every count drops by the (MAX_COUNTED + 1)-th largest and those left at 0 go. The
  counts are exact while a feature has at most ``MAX_COUNTED`` distinct values; past
  that each kept count is low by at most rows / (MAX_COUNTED + 1) (0.01% of the rows)
  and the difference is in ``OTHER``, which is the rows less the kept counts. A feature
  of a distinct value per row (a URL, an e-mail) made the profile hold every value
  until ``build()``: about 190 B each, 290 MB of a 1.5M-row run.
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
# Counters per categorical feature while a version is written: ten times what a profile
# keeps, so the kept ones are picked from many more. At most this many values plus one
# batch's distinct ones are held (about 2 MB at 200 B a value, against 190 B per distinct
# value of the whole table before).
MAX_COUNTED = 10 * MAX_CATEGORIES
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
        self._rng = np.random.default_rng(seed)
        self._numeric = [f for f in view.features if f.dtype in NUMERIC]
        self._categorical = [f for f in view.features if f.dtype in CATEGORICAL]
        empty = np.empty(0, np.float64)
        self._keys: dict[str, np.ndarray] = {f.name: empty for f in self._numeric}
        self._values: dict[str, np.ndarray] = {f.name: empty for f in self._numeric}
        self._counts: dict[str, dict[str, int]] = {f.name: {} for f in self._categorical}
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
        col = table.column(name)
        counts: dict[str, int] = {}
        for item in pc.value_counts(col.drop_null()).to_pylist():
            key = category_name(item["values"])
            counts[key] = counts.get(key, 0) + int(item["counts"])
        merged = self._counts[name]  # merged only once the whole batch counted
        for key, n in counts.items():
            merged[key] = merged.get(key, 0) + n
        if len(merged) > MAX_COUNTED:
            self._counts[name] = _heavy_hitters(merged, MAX_COUNTED)
        self._seen[name] += len(col) - col.null_count

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
                seen = self._seen[f.name]
                features[f.name] = FeatureProfile(
                    f.name, "categorical", seen, categories=_top(self._counts[f.name], seen)
                )
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


def _heavy_hitters(counts: dict[str, int], k: int) -> dict[str, int]:
    """Misra-Gries' step: every count less the (k + 1)-th largest, the positive ones
    kept (at most ``k``). A value whose true count is over rows / (k + 1) is never lost."""
    values = np.fromiter(counts.values(), dtype=np.int64, count=len(counts))
    cut = int(np.partition(values, len(values) - k - 1)[len(values) - k - 1])
    return {key: n - cut for key, n in counts.items() if n > cut}


def _top(counts: dict[str, int], seen: int) -> dict[str, int]:
    """The ``MAX_CATEGORIES`` - 1 largest counts and ``OTHER`` for the rest of the ``seen``
    values, or every count when there are no more and none was cut."""
    if len(counts) <= MAX_CATEGORIES and sum(counts.values()) == seen:
        return dict(counts)
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    kept = dict(ranked[: MAX_CATEGORIES - 1])
    kept[OTHER] = kept.get(OTHER, 0) + seen - sum(kept.values())
    return kept


def profile_table(
    view: FeatureView, data_version: int, table: pa.Table, *, seed: int | None = None
) -> Profile:
    """The profile of one table of rows (the memory store's loaded file)."""
    builder = ProfileBuilder(view, data_version, seed=seed)
    builder.add(table)
    return builder.build()
