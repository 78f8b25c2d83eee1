"""In-process online store: each view's rows as numpy columns, loaded from Parquet.

This is the embedded default. A view's base data is its batch source (a Parquet
file) read with pyarrow when the view is prepared, latest row per key by event
timestamp; it is visible at every data version. Writes (push) go to a per-version
overlay, so the store honours the same data-version contract as Redis.

Lookups are a dict probe per key followed by numpy ``take`` per column: no per-row
objects are built beyond the values the response needs.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from featurestore import metrics
from featurestore.errors import FailedPrecondition
from featurestore.model import DType, FeatureView
from featurestore.sources.arrow import (
    EVENT_TIMESTAMP,
    column_array,
    column_values,
    conform,
    row_keys,
)
from featurestore.sources.base import EntityKey, SourceState, ViewQuery, ViewRead

log = logging.getLogger(__name__)

Row = tuple[Any, ...]  # feature values in view order, then event_ts_us


@dataclass(slots=True)
class _ViewData:
    signature: tuple[Any, ...]
    index: dict[EntityKey, int]
    columns: list[np.ndarray]
    event_ts_us: np.ndarray
    overlays: dict[int, dict[EntityKey, Row]] = field(default_factory=dict)


class MemorySource:
    kind = "memory"

    def __init__(self, name: str = "default") -> None:
        self._name = name
        self._views: dict[str, _ViewData] = {}
        self._state = SourceState.READY

    @property
    def name(self) -> str:
        return self._name

    async def start(self) -> None:
        metrics.SOURCE_UP.labels(self._name, self.kind).set(1)

    async def close(self) -> None:
        self._views.clear()

    def state(self) -> SourceState:
        return self._state

    def table_uri(self, view: FeatureView) -> str:
        return f"memory://{self._name}/{view.name}"

    async def prepare(self, views: Sequence[FeatureView]) -> None:
        for view in views:
            sig = _signature(view)
            current = self._views.get(view.name)
            if current is not None and current.signature == sig:
                continue
            data = await asyncio.to_thread(_load, view, sig)
            if current is not None and current.signature[1:] == sig[1:]:
                data.overlays = current.overlays  # same schema: keep pushed rows
            self._views[view.name] = data
            metrics.SOURCE_ROWS_LOADED.labels(self._name, view.name).set(len(data.index))

    async def read(self, queries: Sequence[ViewQuery]) -> list[ViewRead | BaseException]:
        out: list[ViewRead | BaseException] = []
        for q in queries:
            data = self._views.get(q.view.name)
            if data is None:
                out.append(FailedPrecondition(f"view {q.view.name!r} is not loaded in store {self._name!r}"))
                continue
            out.append(_read(data, q))
        return out

    async def write(self, view: FeatureView, rows: pa.Table, data_version: int) -> int:
        data = self._views.get(view.name)
        if data is None:
            data = _empty(view, _signature(view))
            self._views[view.name] = data
        rows = conform(view, rows)
        keys = row_keys(rows, view.join_keys)
        cols = [column_values(rows.column(f.name), f.dtype) for f in view.features]
        ts = column_values(rows.column(EVENT_TIMESTAMP), DType.TIMESTAMP)
        overlay = data.overlays.setdefault(data_version, {})
        overlay.update(zip(keys, zip(*cols, ts, strict=True), strict=True))
        return len(keys)


def _read(data: _ViewData, q: ViewQuery) -> ViewRead:
    index = data.index
    pos = [index.get(k, -1) for k in q.keys]
    found = [p >= 0 for p in pos]
    if data.event_ts_us.size:
        rows = np.array(pos, dtype=np.int64)
        ts: list[Any] = data.event_ts_us.take(rows).tolist()
        columns: list[list[Any]] = [data.columns[j].take(rows).tolist() for j in q.features]
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
    return (
        stat,
        src,
        tuple((e.name, e.dtype) for e in view.entities),
        tuple((f.name, f.dtype) for f in view.features),
    )


def _empty(view: FeatureView, sig: tuple[Any, ...]) -> _ViewData:
    return _ViewData(sig, {}, [np.empty(0, dtype=object) for _ in view.features], np.empty(0, np.int64))


def _load(view: FeatureView, sig: tuple[Any, ...]) -> _ViewData:
    src = view.batch_source
    if src is None or src.path is None:
        log.info("view %s has no Parquet batch source: serving pushed rows only", view.name)
        return _empty(view, sig)
    wanted = [*view.join_keys, *(f.name for f in view.features), src.timestamp_field]
    try:
        table = pq.read_table(src.path, columns=wanted)
    except (OSError, pa.ArrowInvalid) as e:
        raise FailedPrecondition(f"view {view.name!r}: cannot read {src.path}: {e}") from e
    table = conform(view, table, src.timestamp_field)
    ts_all = table.column(EVENT_TIMESTAMP).cast(pa.int64()).to_numpy()
    # Stable sort by event time, then a dict built in that order keeps the last
    # (latest) row of every key.
    order = np.argsort(ts_all, kind="stable")
    keys = row_keys(table, view.join_keys)
    index = dict(zip((keys[i] for i in order.tolist()), order.tolist(), strict=True))
    columns = [column_array(table.column(f.name), f.dtype) for f in view.features]
    log.info(
        "loaded %d rows (%d keys) for view %s from %s",
        table.num_rows,
        len(index),
        view.name,
        src.path,
    )
    return _ViewData(sig, index, columns, ts_all)
