"""Materialization: batch source -> online store as data version n+1, then an atomic
switch of the view's data-version pointer.

1. Read the registry: the view's definition and its current data version n.
2. Drop leftovers of version n+1 (an interrupted earlier run), so a re-run is
   idempotent.
3. Pre-pass over key and timestamp columns only: mark the latest row of every key,
   so duplicates in the source resolve by event time however the batches fall.
4. Stream the source in batches, conform each to the view's schema (failing before
   any write on a type mismatch), write with pipelined batches, report progress.
5. Publish: compare-and-swap the pointer n -> n+1 in the registry. Servers swap on the
   change; a request reads one version per view, so it sees all of n or all of n+1.
6. Let version n expire after the grace period (in-flight readers, slow watchers).

An interruption anywhere before step 5 leaves version n serving.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from featurestore.errors import FailedPrecondition, NotFound
from featurestore.model import FeatureView
from featurestore.offline import OfflineSource
from featurestore.registry.base import Registry
from featurestore.sources.arrow import conform
from featurestore.sources.base import OnlineSource, VersionedStore

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Progress:
    rows: int
    total: int | None
    elapsed: float

    @property
    def rate(self) -> float:
        return self.rows / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def eta_seconds(self) -> float | None:
        if self.total is None or self.rate == 0:
            return None
        return max(self.total - self.rows, 0) / self.rate


@dataclass(frozen=True, slots=True)
class MaterializeResult:
    view: str
    data_version: int
    previous_version: int
    rows_read: int
    rows_written: int
    seconds: float


class Materializer:
    def __init__(self, registry: Registry, store: OnlineSource, *, grace_seconds: int = 600) -> None:
        if not isinstance(store, VersionedStore):
            raise FailedPrecondition(
                f"store {store.name!r} ({store.kind}) does not keep data versions: "
                "materialization targets redis or clickhouse stores"
            )
        self.registry = registry
        self.store = store
        self.versioned: VersionedStore = store
        self.grace_seconds = grace_seconds

    async def run(
        self,
        view_name: str,
        source: OfflineSource,
        *,
        batch_rows: int = 50_000,
        on_progress: Callable[[Progress], None] | None = None,
    ) -> MaterializeResult:
        t0 = time.monotonic()
        snapshot = await self.registry.current()
        if snapshot is None:
            raise FailedPrecondition("the registry has no snapshot: apply definitions first")
        view = snapshot.definitions.views.get(view_name)
        if view is None:
            raise NotFound(f"unknown feature view {view_name!r}")
        if view.online_store != self.store.name:
            raise FailedPrecondition(
                f"view {view_name!r} is served from store {view.online_store!r}, not {self.store.name!r}"
            )
        ts_field = view.batch_source.timestamp_field if view.batch_source else "event_timestamp"
        current = (await self.registry.data_versions()).get(view_name, 0)
        target = current + 1

        dropped = await self.versioned.drop_version(view, target)
        if dropped:
            log.info("dropped %d leftover rows of %s v%d from an interrupted run", dropped, view_name, target)

        winners = await _latest_rows(source, view, ts_field)
        total = await source.count()
        columns = [*view.join_keys, *(f.name for f in view.features), ts_field]
        rows_read = written = 0
        async for batch in source.batches(columns, batch_rows):
            table = pa.Table.from_batches([batch])
            keep = winners[rows_read : rows_read + table.num_rows]
            rows_read += table.num_rows
            if not keep.all():
                table = table.filter(pa.array(keep))
            written += await self.store.write(view, conform(view, table, ts_field), target)
            if on_progress is not None:
                on_progress(Progress(rows_read, total, time.monotonic() - t0))

        await self.registry.swap_data_version(view_name, expected=current, new=target)
        log.info("published %s data version %d (%d rows)", view_name, target, written)
        if current > 0:
            await self.versioned.expire_version(view, current, self.grace_seconds)
        return MaterializeResult(view_name, target, current, rows_read, written, time.monotonic() - t0)


async def _latest_rows(source: OfflineSource, view: FeatureView, ts_field: str) -> np.ndarray:
    """Boolean mask over source rows: True for the latest row of each entity key."""
    keys = list(view.join_keys)
    table = await source.read_columns([*keys, ts_field])
    n = table.num_rows
    if n == 0:
        return np.zeros(0, dtype=bool)
    table = table.append_column("__row", pa.array(np.arange(n, dtype=np.int64)))
    order = pc.sort_indices(table, sort_keys=[(k, "ascending") for k in [*keys, ts_field, "__row"]])
    ordered = table.take(order)
    last = np.ones(n, dtype=bool)  # last row of each key group in sorted order
    if n > 1:
        differs = np.zeros(n - 1, dtype=bool)
        for k in keys:
            col = ordered.column(k)
            differs |= pc.not_equal(col.slice(0, n - 1), col.slice(1)).to_numpy(zero_copy_only=False)
        last[:-1] = differs
    mask = np.zeros(n, dtype=bool)
    mask[order.to_numpy()[last]] = True
    return mask
