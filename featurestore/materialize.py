"""Materialization: batch source -> online store as data version n+1, then an atomic
switch of the view's data-version pointer.

1. Read the registry: the view's definition and its current data version n.
2. Drop leftovers of version n+1 (an interrupted earlier run), so a re-run is
   idempotent.
3. Stream the source's latest row per key (the source resolves duplicates by event
   time: a pre-pass over key and timestamp columns for Parquet, ``LIMIT 1 BY`` in
   ClickHouse), conform each batch to the view's schema (failing before any write on
   a type mismatch), write with pipelined batches, report progress.
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

import pyarrow as pa

from featurestore.errors import FailedPrecondition, NotFound
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

        total = await source.count()
        columns = [*view.join_keys, *(f.name for f in view.features), ts_field]
        rows_read = written = 0
        async for batch in source.latest_batches(columns, view.join_keys, ts_field, batch_rows):
            rows_read += batch.num_rows
            table = pa.Table.from_batches([batch])
            written += await self.store.write(view, conform(view, table, ts_field), target)
            if on_progress is not None:
                on_progress(Progress(rows_read, total, time.monotonic() - t0))

        await self.registry.swap_data_version(view_name, expected=current, new=target)
        log.info("published %s data version %d (%d rows)", view_name, target, written)
        if current > 0:
            await self.versioned.expire_version(view, current, self.grace_seconds)
        return MaterializeResult(view_name, target, current, rows_read, written, time.monotonic() - t0)
