"""In-process online store: each view's rows as numpy columns, loaded from Parquet.

This is the embedded default. A view's base data is its batch source (a Parquet
file) read with pyarrow when the view is prepared, latest row per key by event
timestamp; it is visible at every data version. Writes (push) go to a per-version
overlay, so the store honours the same data-version contract as Redis.

Lookups find each key's row (int64 keys: a search of a sorted array; string and
composite keys: a dict probe), then numpy ``take`` per column: no per-row objects are
built beyond the values the response needs. A read of one key takes its values straight
from the arrays, and fewer than ``_SCALAR_KEYS`` int keys are searched one by one:
numpy's set-up per call (an array of the keys, a ``take`` per column) cost more than
the lookups themselves there.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from featurestore import metrics
from featurestore.errors import FailedPrecondition
from featurestore.model import INT64_MAX, INT64_MIN, DType, FeatureView
from featurestore.quality.profile import profile_table
from featurestore.rows import (
    EVENT_TIMESTAMP,
    column_array,
    column_values,
    conform,
    row_keys,
)
from featurestore.sources.base import EntityKey, SourceState, ViewQuery, ViewRead

log = logging.getLogger(__name__)

Row = tuple[Any, ...]  # feature values in view order, then event_ts_us
# Fewer int keys than this are searched one by one, and one key's row is read with
# ``item`` per column instead of ``take`` + ``tolist``: numpy's set-up per call outweighs
# the lookups there. A demo view's read (8 features of 100,000 users, best of 5 x 3,000
# reads, 2026-12-07): 1 key 10.8-11.4 -> 3.6-3.8 µs, 4 keys 11.9-12.4 -> 10.6-10.7; the
# key search alone crosses over at 8 keys (7.0 one by one against 6.8 vectorised).
_SCALAR_KEYS = 8


class _KeyIndex:
    """Entity key -> row position. Int64 keys live in a sorted array (8 bytes a key,
    vectorised lookups); string and composite keys in a dict."""

    __slots__ = ("_dict", "_keys", "_rows")

    def __init__(self, keys: list[EntityKey], rows: np.ndarray) -> None:
        self._dict: dict[EntityKey, int] | None = None
        if keys and type(keys[0]) is int:
            arr = np.asarray(keys, dtype=np.int64)[rows]
            # later rows (by event time) must win: keep the last occurrence of each key
            rev_keys, rev_first = np.unique(arr[::-1], return_index=True)
            self._keys = rev_keys
            self._rows = rows[::-1][rev_first]
        else:
            self._keys = self._rows = np.empty(0, np.int64)
            self._dict = dict(zip((keys[i] for i in rows.tolist()), rows.tolist(), strict=True))

    def __len__(self) -> int:
        return len(self._dict) if self._dict is not None else len(self._keys)

    def latest_rows(self) -> np.ndarray:
        """The row of every key (its latest), in no particular order."""
        if self._dict is not None:
            return np.fromiter(self._dict.values(), dtype=np.int64, count=len(self._dict))
        return self._rows

    def positions(self, keys: Sequence[EntityKey]) -> list[int]:
        """Row of each key, -1 where absent."""
        if self._dict is not None:
            d = self._dict
            return [d.get(k, -1) for k in keys]
        if not keys or not all(type(k) is int for k in keys):
            return [-1] * len(keys)
        if len(keys) < _SCALAR_KEYS:
            return self._few(keys)
        try:
            q = np.fromiter(keys, dtype=np.int64, count=len(keys))
        except OverflowError:  # a key past int64 (joins refuse them before): absent, as in _few
            return self._few(keys)
        at = np.searchsorted(self._keys, q)
        at[at == len(self._keys)] = 0
        hit = self._keys[at] == q
        out: list[int] = np.where(hit, self._rows[at], -1).tolist()
        return out

    def _few(self, keys: Sequence[Any]) -> list[int]:
        """``positions`` of a few int keys, one scalar search each (no arrays to set up)."""
        sorted_keys, rows, size = self._keys, self._rows, len(self._keys)
        out = []
        for k in keys:
            if not INT64_MIN <= k <= INT64_MAX:  # (numpy would compare it as a float)
                out.append(-1)
                continue
            at = int(sorted_keys.searchsorted(k))
            out.append(rows.item(at) if at < size and sorted_keys.item(at) == k else -1)
        return out


@dataclass(slots=True)
class _ViewData:
    signature: tuple[Any, ...]
    index: _KeyIndex
    columns: list[np.ndarray]
    event_ts_us: np.ndarray
    overlays: dict[int, dict[EntityKey, Row]] = field(default_factory=dict)
    index_key: tuple[Any, ...] = ()
    # The loaded file's reference profile (every data version serves it), and profiles
    # written for particular versions.
    base_profile: bytes | None = None
    profiles: dict[int, bytes] = field(default_factory=dict)


ViewId = tuple[str, str]  # (view name, layout): a renamed feature is a different view


class MemorySource:
    kind = "memory"

    def __init__(self, name: str = "default") -> None:
        self._name = name
        self._views: dict[ViewId, _ViewData] = {}
        self._state = SourceState.READY
        # Views cut from one file share its key index (the demo's two views do).
        self._indexes: dict[tuple[Any, ...], tuple[_KeyIndex, np.ndarray]] = {}

    @property
    def name(self) -> str:
        return self._name

    async def start(self) -> None:
        metrics.SOURCE_UP.labels(self._name, self.kind).set(1)

    async def close(self) -> None:
        self._views.clear()

    def state(self) -> SourceState:
        return self._state

    def serving(self, versions: Mapping[str, int]) -> None:
        """Nothing to check: the process holds whatever it loaded and was pushed, and
        cannot lose it while it runs."""

    def missing(self) -> Mapping[str, str]:
        return {}

    def table_uri(self, view: FeatureView) -> str:
        return f"memory://{self._name}/{view.name}"

    async def prepare(self, views: Sequence[FeatureView]) -> None:
        """Load what is new; keep every layout named (a canary or the next snapshot
        can change a view while the current one still serves it); drop the rest."""
        wanted: dict[ViewId, _ViewData] = {}
        reloaded: list[tuple[_ViewData, _ViewData]] = []  # (current, its reload)
        for view in views:
            vid = (view.name, view.layout)
            sig = _signature(view)
            current = self._views.get(vid)
            if current is not None and current.signature == sig:
                wanted[vid] = current
                continue
            data = await asyncio.to_thread(_load, view, sig, self._indexes)
            if current is not None:  # same layout, new base data
                reloaded.append((current, data))
                data.profiles = current.profiles
            wanted[vid] = data
            metrics.SOURCE_ROWS_LOADED.labels(self._name, view.name).set(len(data.index))
        # The pushed rows a reload does not outdate, taken here, with no await before the
        # swap: a push during a later view's load lands in current.overlays (review 49).
        for current, data in reloaded:
            data.overlays = _newer_than(current.overlays, data)
        self._views = wanted
        live = {d.index_key for d in wanted.values()}
        for key in [k for k in self._indexes if k not in live]:
            del self._indexes[key]

    async def read(self, queries: Sequence[ViewQuery]) -> list[ViewRead | BaseException]:
        out: list[ViewRead | BaseException] = []
        views = self._views
        for q in queries:
            data = views.get((q.view.name, q.view.layout))
            if data is None:
                out.append(FailedPrecondition(f"view {q.view.name!r} is not loaded in store {self._name!r}"))
                continue
            out.append(_read(data, q))
        return out

    async def write(
        self, view: FeatureView, rows: pa.Table, data_version: int, *, create: bool = True
    ) -> int:
        """(``create`` does not apply: the memory store cannot lose a version.)"""
        vid = (view.name, view.layout)
        data = self._views.get(vid)
        if data is None:
            data = self._views[vid] = _empty(view, _signature(view))
        rows = conform(view, rows)
        keys = row_keys(rows, view.join_keys)
        cols = [column_values(rows.column(f.name), f.dtype) for f in view.features]
        ts = column_values(rows.column(EVENT_TIMESTAMP), DType.TIMESTAMP)
        overlay = data.overlays.setdefault(data_version, {})
        overlay.update(zip(keys, zip(*cols, ts, strict=True), strict=True))
        return len(keys)

    async def write_profile(self, view: FeatureView, data_version: int, blob: bytes) -> None:
        vid = (view.name, view.layout)
        data = self._views.get(vid)
        if data is None:
            data = self._views[vid] = _empty(view, _signature(view))
        data.profiles[data_version] = blob

    async def read_profile(self, view: FeatureView, data_version: int) -> bytes | None:
        """The version's own profile, else the loaded file's (visible at every version)."""
        data = self._views.get((view.name, view.layout))
        if data is None:
            return None
        return data.profiles.get(data_version, data.base_profile)


def _read(data: _ViewData, q: ViewQuery) -> ViewRead:
    pos = data.index.positions(q.keys)
    found = [p >= 0 for p in pos]
    if len(pos) == 1 and pos[0] >= 0:  # one row: its values straight from the arrays
        p = pos[0]
        ts: list[Any] = [data.event_ts_us.item(p)]
        columns: list[list[Any]] = [[data.columns[j].item(p)] for j in q.features]
    elif data.event_ts_us.size:
        rows = np.array(pos, dtype=np.int64)
        ts = data.event_ts_us.take(rows).tolist()
        columns = [data.columns[j].take(rows).tolist() for j in q.features]
    else:
        ts = [0] * len(pos)
        columns = [[None] * len(pos) for _ in q.features]
    overlay = data.overlays.get(q.data_version)
    if overlay:
        width = len(data.columns)
        for i, k in enumerate(q.keys):
            row = overlay.get(k)
            if row is not None:
                found[i] = True
                ts[i] = row[width]
                for c, j in zip(columns, q.features, strict=True):
                    c[i] = row[j]
    return ViewRead(found=found, event_ts_us=ts, columns=columns)


def _newer_than(
    overlays: dict[int, dict[EntityKey, Row]], data: _ViewData
) -> dict[int, dict[EntityKey, Row]]:
    """The pushed rows that are newer (by event time) than the base row of their key in
    ``data``, a reloaded file: last write wins across a reload as within a load."""
    width = len(data.columns)
    kept: dict[int, dict[EntityKey, Row]] = {}
    for version, rows in overlays.items():
        keys = list(rows)
        base = data.index.positions(keys)
        kept[version] = {
            k: rows[k]
            for k, at in zip(keys, base, strict=True)
            if at < 0 or rows[k][width] > data.event_ts_us.item(at)
        }
    return kept


def _signature(view: FeatureView) -> tuple[Any, ...]:
    """What the loaded arrays depend on; an unchanged signature skips the reload."""
    src = view.batch_source
    stat: tuple[int, int] | None = None
    if src is not None and src.path is not None:
        try:
            st = os.stat(src.path)
            stat = (st.st_mtime_ns, st.st_size)
        except OSError:
            stat = None
    return (stat, src, view.layout)


def _empty(view: FeatureView, sig: tuple[Any, ...]) -> _ViewData:
    return _ViewData(
        sig,
        _KeyIndex([], np.empty(0, np.int64)),
        [np.empty(0, dtype=object) for _ in view.features],
        np.empty(0, np.int64),
    )


def _load(
    view: FeatureView, sig: tuple[Any, ...], indexes: dict[tuple[Any, ...], tuple[_KeyIndex, np.ndarray]]
) -> _ViewData:
    src = view.batch_source
    if src is None or src.path is None:
        log.info("view %s has no Parquet batch source: serving pushed rows only", view.name)
        return _empty(view, sig)
    wanted = [*view.join_keys, *(f.name for f in view.features), src.timestamp_field]
    try:
        table = pq.read_table(src.path, columns=wanted)
    except (OSError, pa.ArrowInvalid) as e:
        raise FailedPrecondition(f"view {view.name!r}: cannot read {src.path}: {e}") from e
    source_ts = table.column(src.timestamp_field)
    table = conform(view, table, src.timestamp_field)
    index_key = (sig[0], src.path, src.timestamp_field, tuple((e.name, e.dtype) for e in view.entities))
    shared = indexes.get(index_key)
    if shared is None:
        ts_all = table.column(EVENT_TIMESTAMP).cast(pa.int64()).to_numpy()
        # Rows in event-time order: the index keeps the last (latest) row of every key. A
        # nanosecond source is ordered by its own times, which conform floored to the µs,
        # so the row a materialization would load wins here too (offline.latest_mask).
        fine = pa.types.is_timestamp(source_ts.type) and source_ts.type.unit == "ns"
        order = np.argsort(source_ts.cast(pa.int64()).to_numpy() if fine else ts_all, kind="stable")
        shared = indexes[index_key] = (_KeyIndex(row_keys(table, view.join_keys), order), ts_all)
    index, ts_all = shared
    columns = [column_array(table.column(f.name), f.dtype) for f in view.features]
    log.info(
        "loaded %d rows (%d keys) for view %s from %s",
        table.num_rows,
        len(index),
        view.name,
        src.path,
    )
    latest = table.take(pa.array(index.latest_rows()))
    profile = profile_table(view, 0, latest, seed=0).to_bytes()
    return _ViewData(sig, index, columns, ts_all, index_key=index_key, base_profile=profile)
