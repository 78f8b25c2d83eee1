"""Materialization: batch source -> online store as data version n+1, then an atomic
switch of the view's data-version pointer.

1. Read the registry: the view's definition and its current data version n.
2. Allocate a fresh data version m > n from the registry's counter (compare-and-swap):
   two concurrent runs never write into the same version.
3. Stream the source's latest row per key (the source resolves duplicates by event
   time: a pre-pass over key and timestamp columns for Parquet, ``LIMIT 1 BY`` in
   ClickHouse), conform each batch to the view's schema (failing before any write on
   a type mismatch), write with pipelined batches, report progress.
4. Publish: compare-and-swap the pointer n -> m in the registry. Servers swap on the
   change; a request reads one version per view, so it sees all of n or all of m.
   Of concurrent runs the first to publish wins; the others fail with a conflict.
5. Drop what runs given versions between n and m left (they can no longer publish),
   and let version n expire after the grace period (in-flight readers, slow watchers).

A failure or interruption before step 4 leaves version n serving and drops version m's
rows; only a killed process leaves rows behind, for the next publication to drop.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import pyarrow as pa

from featurestore.errors import FailedPrecondition, NotFound
from featurestore.model import FeatureView
from featurestore.offline import OfflineSource
from featurestore.registry.base import Registry
from featurestore.rows import conform
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
        # A version no other run was given: concurrent runs never share rows.
        target = await self.registry.allocate_data_version(view_name)
        try:
            if await self.versioned.has_version(view, target):
                # The registry never gave this version out before, so whatever the store
                # holds under it is another registry's (reset or recreated registry over
                # a live store): mixing those rows into this run would serve them.
                dropped = await self.versioned.drop_version(view, target)
                log.warning("dropped %d stale rows of %s v%d before writing it", dropped, view_name, target)
            rows_read, written = await self._load(view, source, ts_field, target, batch_rows, on_progress, t0)
            await self.registry.swap_data_version(view_name, expected=current, new=target)
        except BaseException:
            await self._abandon(view, target)
            raise
        log.info("published %s data version %d (%d rows)", view_name, target, written)
        # Versions between were allocated to runs that can no longer publish (their
        # compare-and-swap expects a pointer that has moved): drop what they left.
        for orphan in range(current + 1, target):
            dropped = await self.versioned.drop_version(view, orphan)
            if dropped:
                log.info("dropped %d rows of %s v%d left by an unpublished run", dropped, view_name, orphan)
        if current > 0:
            await self.versioned.expire_version(view, current, self.grace_seconds)
        return MaterializeResult(view_name, target, current, rows_read, written, time.monotonic() - t0)

    async def _abandon(self, view: FeatureView, target: int) -> None:
        """Drop a failed run's rows, unless the pointer did move to them (a publish whose
        reply was lost): when in doubt leave them, the next publication drops them."""
        try:
            if (await self.registry.data_versions()).get(view.name) != target:
                await self.versioned.drop_version(view, target)
        except Exception:
            log.warning("rows of %s v%d stay behind until the next publication", view.name, target)

    async def _load(
        self,
        view: FeatureView,
        source: OfflineSource,
        ts_field: str,
        target: int,
        batch_rows: int,
        on_progress: Callable[[Progress], None] | None,
        t0: float,
    ) -> tuple[int, int]:
        total = await source.count()
        columns = [*view.join_keys, *(f.name for f in view.features), ts_field]
        rows_read = written = 0
        async for batch in source.latest_batches(columns, view.join_keys, ts_field, batch_rows):
            rows_read += batch.num_rows
            table = pa.Table.from_batches([batch])
            written += await self.store.write(view, conform(view, table, ts_field), target)
            if on_progress is not None:
                on_progress(Progress(rows_read, total, time.monotonic() - t0))
        return rows_read, written
