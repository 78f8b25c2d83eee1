"""Online/offline consistency: does what is served for a key agree with the latest row
the view's batch source holds for it?

Each sampled key is put in exactly one class (docs/quality.md):

* ``consistent``: same event time, same values;
* ``stale``: the online row is older than the offline one (the batch source moved on
  and was not materialized);
* ``online_newer``: the online row is newer (a push landed after the offline row:
  expected, not a mismatch);
* ``conflict``: same event time, different values;
* ``missing_online``: the online side does not have the key (the offline side does; a
  key named by the caller that neither side has is counted here too);
* ``missing_offline``: served, but not in the batch source (pushed keys; only keys the
  caller names can be found so: keys are sampled from the offline side);
* ``pending``: the offline row is newer than the served data version's watermark (the
  newest event time its materialization loaded) and the online side does not have it
  yet: a row added to the batch source since, which the next materialization loads;
* ``not_loaded``: the offline row is older than where the served version's load began
  (the watermark's ``start_us``: a ``--start`` run) and the online side does not have it:
  the key was never loaded, by design (not a mismatch).

A key served ``OUTSIDE_MAX_AGE`` has a timestamp but no values: it is classified by time,
and consistent when the times agree. Mismatches are ``stale + conflict +
missing_online`` (a key neither side has, named by the caller, is not one): with the
watermark known, those are rows the served version should hold and does not. Without it
(the memory store loads its file itself; the CLI through ``--url``), no row is pending or
not loaded. A
watermark without a start (a run without ``--start``, or one recorded by an older
release) makes no key ``not_loaded`` (docs/quality.md).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from featurestore.errors import Unavailable
from featurestore.model import DType, FeatureView
from featurestore.offline import EVERYTHING, OfflineSource
from featurestore.rows import EVENT_TIMESTAMP, column_values, conform, row_keys
from featurestore.sources.base import EntityKey, OnlineSource, ViewQuery, ViewRead

CLASSES = (
    "consistent",
    "stale",
    "online_newer",
    "conflict",
    "missing_online",
    "missing_offline",
    "pending",
    "not_loaded",
)
MAX_EXAMPLES = 10
READ_CHUNK = 1000  # keys per online read (through --url, split further under a lower max_rows: cli/check.py)


@dataclass(frozen=True, slots=True)
class Side:
    """One side's latest row of a key: event time (epoch µs) and feature values in view
    order (None: not comparable, e.g. served OUTSIDE_MAX_AGE)."""

    ts_us: int
    values: tuple[Any, ...] | None


OnlineReader = Callable[[Sequence[EntityKey]], Awaitable[list[Side | None]]]


class ScanStopped(Exception):
    """``sample_offline`` was told to stop (the scheduled check's deadline passed)."""


@dataclass
class Report:
    view: str
    checked: int = 0
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(CLASSES, 0))
    examples: list[dict[str, Any]] = field(default_factory=list)
    absent: int = 0  # of missing_online: keys neither side has (named by the caller)

    @property
    def mismatches(self) -> int:
        missing = self.counts["missing_online"] - self.absent
        return self.counts["stale"] + self.counts["conflict"] + missing

    def passed(self, max_mismatch: float) -> bool:
        return self.mismatches <= max_mismatch * self.checked

    def to_dict(self) -> dict[str, Any]:
        return {"view": self.view, "checked": self.checked, **self.counts, "examples": self.examples}


def same_value(a: Any, b: Any, dtype: DType) -> bool:
    if a is None or b is None:
        return a is None and b is None
    if dtype is DType.FLOAT64:
        return _same_float(a, b, 1e-12)
    if dtype is DType.FLOAT32_VECTOR:
        return len(a) == len(b) and all(_same_float(x, y, 1e-6) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def _same_float(a: float | None, b: float | None, rel_tol: float) -> bool:
    # a vector's element may be null (the Redis decoder serves what another tool wrote):
    # null is only the same as null, a difference (a conflict) rather than a TypeError
    # that made the whole check an error (review s54)
    if a is None or b is None:
        return a is None and b is None
    return (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=rel_tol, abs_tol=0.0)


def _plain(value: Any) -> Any:
    """A value as the JSON report can carry it: NaN and infinities as strings ("nan",
    "inf"), since ``json.dumps`` would write bare ``NaN`` (not JSON: jq refuses it)."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def classify(
    view: FeatureView,
    online: Side | None,
    offline: Side | None,
    watermark_us: int | None = None,
    start_us: int | None = None,
) -> tuple[str, str | None]:
    """The key's class, and the first feature that differs (conflicts). ``watermark_us``:
    the served data version's watermark (None: unknown, nothing is pending);
    ``start_us``: where that version's load began (the watermark's ``start_us``; None:
    from the beginning, nothing is not loaded)."""
    if offline is not None and (online is None or online.ts_us < offline.ts_us):
        if watermark_us is not None and offline.ts_us > watermark_us:
            return "pending", None
        if start_us is not None and offline.ts_us < start_us:
            return "not_loaded", None
    if online is None:
        return "missing_online", None
    if offline is None:
        return "missing_offline", None
    if online.ts_us < offline.ts_us:
        return "stale", None
    if online.ts_us > offline.ts_us:
        return "online_newer", None
    if online.values is None or offline.values is None:
        return "consistent", None
    for f, a, b in zip(view.features, online.values, offline.values, strict=True):
        if not same_value(a, b, f.dtype):
            return "conflict", f.name
    return "consistent", None


async def offline_rows(
    view: FeatureView, source: OfflineSource, batch_rows: int = 100_000
) -> pa.Table | None:
    """The batch source's latest row per key, conformed to the view's schema (None: no rows)."""
    ts_field = view.batch_source.timestamp_field if view.batch_source else EVENT_TIMESTAMP
    columns = [*view.join_keys, *(f.name for f in view.features), ts_field]
    batches = [
        b async for b in source.latest_batches(columns, view.join_keys, ts_field, batch_rows, EVERYTHING)
    ]
    return conform(view, pa.Table.from_batches(batches), ts_field) if batches else None


def offline_sides(view: FeatureView, table: pa.Table | None) -> dict[EntityKey, Side]:
    if table is None:
        return {}
    keys = row_keys(table, view.join_keys)
    ts = column_values(table.column(EVENT_TIMESTAMP), DType.TIMESTAMP)
    cols = [column_values(table.column(f.name), f.dtype) for f in view.features]
    return {k: Side(t, tuple(c[i] for c in cols)) for i, (k, t) in enumerate(zip(keys, ts, strict=True))}


def sample_keys(
    offline: dict[EntityKey, Side], n: int, extra: Sequence[EntityKey] = (), seed: int = 0
) -> list[EntityKey]:
    """``n`` offline keys drawn uniformly without replacement (seeded), in row order, then
    ``extra``: every row gets a random priority (``seed``'s stream, in row order) and the
    ``n`` smallest win, as ``sample_offline`` picks them batch by batch, so one seed picks
    the same keys both ways."""
    keys = list(offline)
    if len(keys) > n:
        picked = _smallest(np.random.default_rng(seed).random(len(keys)), n)
        keys = [keys[i] for i in np.sort(picked).tolist()]
    seen = set(keys)
    return keys + [k for k in extra if k not in seen]


def _smallest(priorities: np.ndarray, n: int) -> np.ndarray:
    """Indices of the ``n`` smallest priorities."""
    picked: np.ndarray = (
        np.argpartition(priorities, n - 1)[:n] if len(priorities) > n else np.arange(len(priorities))
    )
    return picked


async def sample_offline(
    view: FeatureView,
    source: OfflineSource,
    n: int,
    seed: int,
    batch_rows: int = 100_000,
    stop: Callable[[], bool] | None = None,
) -> dict[EntityKey, Side]:
    """``n`` keys of the batch source drawn as ``sample_keys(..., seed=seed)`` draws them,
    with their latest rows, in one streaming pass: a reservoir of the ``n`` rows of
    smallest priority so far, merged batch by batch (numpy and Arrow: no Python per row).
    Memory is the reservoir and one batch, whatever the size of the source; only the
    kept rows become Python values. (``offline_rows`` + ``offline_sides`` hold every row:
    ~0.5 KB and ~3 µs of GIL-bound Python per key.) ``stop``, asked before each batch:
    True ends the scan (``ScanStopped``), so a check given up on does not keep the
    warehouse scanning to the end."""
    ts_field = view.batch_source.timestamp_field if view.batch_source else EVENT_TIMESTAMP
    columns = [*view.join_keys, *(f.name for f in view.features), ts_field]
    rng = np.random.default_rng(seed)
    # aclosing: a stop (or an error) closes the source's stream here, while the scan's
    # loop runs. Left to `async for`, the suspended generator was closed at the loop's
    # teardown, where its cleanup's await was aborted: the stream was never closed
    # (review 3, s54).
    batches = source.latest_batches(columns, view.join_keys, ts_field, batch_rows, EVERYTHING)
    async with _closing(batches):
        kept, position = await _reservoir(source, batches, n, rng, stop)
    if kept is None:
        return {}
    in_order = np.argsort(position)
    return offline_sides(view, conform(view, kept.take(pa.array(in_order)), ts_field))


@contextlib.asynccontextmanager
async def _closing(batches: AsyncIterator[pa.RecordBatch]) -> AsyncIterator[None]:
    """``contextlib.aclosing`` for any source: its batches' ``aclose()`` (an async
    generator's: its ``finally`` runs now), when they have one."""
    try:
        yield
    finally:
        aclose = getattr(batches, "aclose", None)
        if aclose is not None:
            await aclose()


async def _reservoir(
    source: OfflineSource,
    batches: AsyncIterator[pa.RecordBatch],
    n: int,
    rng: np.random.Generator,
    stop: Callable[[], bool] | None,
) -> tuple[pa.Table | None, np.ndarray]:
    """``sample_offline``'s pass: the kept rows and their positions in the source."""
    kept: pa.Table | None = None
    priority, position = np.empty(0), np.empty(0, np.int64)
    offset = 0
    async for batch in batches:
        if stop is not None and stop():  # the check gave up (its deadline): end the warehouse's work too
            raise ScanStopped(f"{source.describe()}: scan stopped after {offset} rows")
        p = rng.random(batch.num_rows)  # drawn for every row, as sample_keys draws them
        at = np.arange(offset, offset + batch.num_rows)
        offset += batch.num_rows
        if len(priority) >= n:  # only rows beating the largest kept priority can enter
            enter = p < priority.max()
            if not enter.any():
                continue
            batch, p, at = batch.filter(pa.array(enter)), p[enter], at[enter]
        part = pa.Table.from_batches([batch])
        kept = part if kept is None else pa.concat_tables([kept, part])
        priority, position = np.concatenate([priority, p]), np.concatenate([position, at])
        if len(priority) > n:
            keep = _smallest(priority, n)
            kept, priority, position = kept.take(pa.array(keep)), priority[keep], position[keep]
    return kept, position


async def check(
    view: FeatureView,
    offline: dict[EntityKey, Side],
    keys: Sequence[EntityKey],
    read_online: OnlineReader,
    watermark_us: int | None = None,
    start_us: int | None = None,
) -> Report:
    """Classify ``keys``; ``watermark_us``, ``start_us``: the served data version's (see
    ``classify``)."""
    report = Report(view.name)
    for start in range(0, len(keys), READ_CHUNK):
        chunk = keys[start : start + READ_CHUNK]
        online = await read_online(chunk)
        for key, on in zip(chunk, online, strict=True):
            off = offline.get(key)
            cls, feature = classify(view, on, off, watermark_us, start_us)
            report.checked += 1
            report.counts[cls] += 1
            report.absent += on is None and off is None
            if cls != "consistent" and len(report.examples) < MAX_EXAMPLES:
                report.examples.append(_example(view, key, cls, feature, on, off))
    return report


def _example(
    view: FeatureView, key: EntityKey, cls: str, feature: str | None, on: Side | None, off: Side | None
) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "key": list(key) if isinstance(key, tuple) else key,
        "class": cls,
        "online_event_time_us": on.ts_us if on else None,
        "offline_event_time_us": off.ts_us if off else None,
    }
    if feature is not None and on is not None and off is not None and on.values and off.values:
        i = [f.name for f in view.features].index(feature)
        doc.update(feature=feature, online=_plain(on.values[i]), offline=_plain(off.values[i]))
    return doc


def store_reader(store: OnlineSource, view: FeatureView, data_version: int) -> OnlineReader:
    """Read the online side straight from the view's store, at one data version."""
    features = list(range(len(view.features)))

    async def read(keys: Sequence[EntityKey]) -> list[Side | None]:
        [res] = await store.read([ViewQuery(view, keys, features, data_version)])
        if not isinstance(res, ViewRead):
            raise Unavailable(f"view {view.name!r}: the online store failed: {res}")
        return [
            Side(res.event_ts_us[i], tuple(c[i] for c in res.columns)) if res.found[i] else None
            for i in range(len(keys))
        ]

    return read
