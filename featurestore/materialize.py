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
   The rows written also feed the version's reference profile (``quality/profile.py``),
   stored with the version before it is published.
5. Let version n expire after the grace period (in-flight readers, slow watchers;
   version 0 too when pushes wrote into it), drop what runs given versions between n
   and m left (they can no longer publish), then expire every older version the store
   still holds without an expiry: what a process killed during this step left.

A failure or interruption before step 4 leaves version n serving and drops version m's
rows. A cancellation (the CLI's SIGTERM) during step 5 lets it finish first. Only a
killed process leaves rows behind, for the next publication to drop or expire (step 5).

A run may read an event-time range of the source (``EventTimeRange``: ``--start``,
``--end``). Every run records a watermark in the registry: the newest event time it
loaded, the data version it loaded it into, and where a full run's range began (its
``--start``: keys whose latest row is older were not loaded, which the consistency check
must not take for lost keys). An incremental run keeps the start of the full run whose
version it adds to.

An incremental run (``incremental=True``) reads only the rows newer than the watermark
and upserts their latest row per key into the CURRENT data version, as a push does: no
new version, no copy of what is already there, servers see the rows as they are written:
at once, but for a key a server's row cache holds, within ``cache.ttl_seconds`` (this
process cannot drop the servers' cached rows). It then moves the watermark by
compare-and-swap. When there is nothing to add to (no current
version, no watermark of the current version, or the store lost that version's rows)
it runs as a full run instead. A full run that publishes while an incremental one is
writing wins: the incremental rows land in the version being replaced until it starts
expiring, then its writes are refused (Redis; ``Unavailable``) and the run fails; its
watermark swap fails or is overwritten either way, and the next incremental run reads
those rows again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import pyarrow as pa
import pyarrow.compute as pc

from featurestore.errors import Conflict, FailedPrecondition, NotFound
from featurestore.model import FeatureView
from featurestore.offline import EVERYTHING, EventTimeRange, OfflineSource, ScanCounts
from featurestore.publication import cleanup_to_the_end, swap_to_the_end
from featurestore.quality.profile import ProfileBuilder
from featurestore.registry.base import Registry, Watermark
from featurestore.registry.conflicts import conflict
from featurestore.rows import EVENT_TIMESTAMP, conform
from featurestore.sources.base import DataMissing, OnlineSource, ProfileStore, VersionedStore

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Progress:
    rows: int  # rows loaded so far (the latest row of a key each)
    total: int | None  # rows to load (the source's estimate; None: not known)
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
    rows_read: int  # source rows in the range, duplicates included
    rows_written: int  # the latest row of each key
    seconds: float
    incremental: bool = False  # rows upserted into the current version (data_version == previous)
    watermark_us: int | None = None  # newest event time loaded so far (None: the source had no rows)
    expiring: tuple[int, ...] = ()  # versions this publication set to expire after the grace period


class Materializer:
    def __init__(
        self,
        registry: Registry,
        store: OnlineSource,
        *,
        grace_seconds: int = 600,
        stop: asyncio.Event | None = None,
    ) -> None:
        """``stop``: set to end a run between two batches, as cancelling it does (the CLI
        sets it with the cancel on SIGTERM and SIGINT). A cancellation alone is not
        enough: Python 3.11's ``asyncio.wait_for``, which redis-py wraps every socket write
        in, returns normally when the cancel lands while it starts or completes the write
        (gh-86296): 1 run in ~5 went on to publish (review s55), 1 Ctrl-C in 2 (s57). So
        ``_check_stop`` also ends a run whose task has a cancellation pending that no
        ``CancelledError`` carried."""
        if not isinstance(store, VersionedStore):
            raise FailedPrecondition(
                f"store {store.name!r} ({store.kind}) does not keep data versions: "
                "materialization targets redis or clickhouse stores"
            )
        self.registry = registry
        self.store = store
        self.versioned: VersionedStore = store
        self.grace_seconds = grace_seconds
        self.stop = stop

    async def run(
        self,
        view_name: str,
        source: OfflineSource,
        *,
        batch_rows: int = 50_000,
        on_progress: Callable[[Progress], None] | None = None,
        span: EventTimeRange = EVERYTHING,
        incremental: bool = False,
    ) -> MaterializeResult:
        t0 = time.monotonic()
        self._check_stop()  # (--all: the views after a stopped one)
        snapshot = await self.registry.current()
        if snapshot is None:
            raise FailedPrecondition("the registry has no snapshot: apply definitions first")
        view = snapshot.definitions.views.get(view_name)
        if view is None:
            raise NotFound(f"unknown feature view {view_name!r}")
        if view.stream is not None:
            raise FailedPrecondition(f"{view_name!r} is a stream view: `featurestore stream run` feeds it")
        if view.online_store != self.store.name:
            raise FailedPrecondition(
                f"view {view_name!r} is served from store {view.online_store!r}, not {self.store.name!r}"
            )
        load = _Load(view, source, batch_rows, on_progress, t0)
        current = (await self.registry.data_versions()).get(view_name, 0)
        mark = await self.registry.watermark(view_name)
        if incremental:
            reason = await self._why_not_incremental(view, current, mark)
            if reason is None:
                assert mark is not None
                return await self._incremental(load, current, mark, span)
            log.info("%s: a full run instead of an incremental one: %s", view_name, reason)
        return await self._full(load, current, span)

    async def _why_not_incremental(
        self, view: FeatureView, current: int, mark: Watermark | None
    ) -> str | None:
        if current == 0:
            return "the view has no data version yet"
        if mark is None or mark.data_version != current:
            return f"no watermark of data version {current}"
        if not await self.versioned.has_version(view, current):
            return f"the store holds nothing of data version {current}"
        return None

    async def _incremental(
        self, load: _Load, current: int, mark: Watermark, span: EventTimeRange
    ) -> MaterializeResult:
        span = replace(span, after_us=mark.event_time_us)
        rows_read, written, newest = await self._load(load, current, span)
        if newest is not None and newest > mark.event_time_us:
            moved = Watermark(current, newest, mark.start_us)  # the version's rows still begin there
            await self.registry.set_watermark(load.view.name, moved, expected=mark)
        log.info("%s: %d rows upserted into data version %d", load.view.name, written, current)
        return MaterializeResult(
            load.view.name,
            current,
            current,
            rows_read,
            written,
            time.monotonic() - load.t0,
            incremental=True,
            watermark_us=max(mark.event_time_us, newest or mark.event_time_us),
        )

    async def _full(self, load: _Load, current: int, span: EventTimeRange) -> MaterializeResult:
        view, view_name = load.view, load.view.name
        # A version no other run was given: concurrent runs never share rows.
        target = await self.registry.allocate_data_version(view_name)
        try:
            if await self.versioned.has_version(view, target):
                # The registry never gave this version out before, so whatever the store
                # holds under it is another registry's (reset or recreated registry over
                # a live store): mixing those rows into this run would serve them.
                dropped = await self.versioned.drop_version(view, target)
                log.warning("dropped %d stale rows of %s v%d before writing it", dropped, view_name, target)
            # The version exists from here, rows or none: a load that matches no row
            # (a range, an empty source) publishes an empty version, not a missing one.
            await self.versioned.mark_version(view, target)
            profile = ProfileBuilder(view, target)
            try:
                rows_read, written, newest = await self._load(load, target, span, profile)
            except DataMissing as e:
                moved = (await self.registry.data_versions()).get(view_name, 0)
                if moved != current:  # another run published first, and dropped this one's rows
                    raise conflict(f"data version of view {view_name!r}", current, moved) from e
                raise
            await self._write_profile(profile)
            self._check_stop()  # not published: its rows go
            stopped = await swap_to_the_end(
                self.registry.swap_data_version(view_name, expected=current, new=target)
            )
        except BaseException:
            await self._abandon(view, target)
            raise
        log.info("published %s data version %d (%d rows)", view_name, target, written)
        narrowed = _narrowed(span)
        if narrowed and current > 0:
            log.warning("%s: data version %d replaced %d, but %s", view_name, target, current, narrowed)
        expiring = await cleanup_to_the_end(self._after_publish(view, current, target, span.start_us, newest))
        if stopped:  # (cancelled while the pointer was written: published, so reported as such)
            log.warning(
                "%s: stopped while publishing data version %d: published, cleaned up", view_name, target
            )
        seconds = time.monotonic() - load.t0
        return MaterializeResult(
            view_name, target, current, rows_read, written, seconds, watermark_us=newest, expiring=expiring
        )

    async def _after_publish(
        self, view: FeatureView, current: int, target: int, start_us: int | None, newest: int | None
    ) -> tuple[int, ...]:
        """Record the watermark, then retire what ``target`` replaced: the versions set to
        expire."""
        if newest is not None:
            await self._mark(view.name, Watermark(target, newest, start_us))
        # What the store holds below this version with no expiry: the version replaced
        # (version 0 only when pushes wrote into it), and what a run killed after its
        # publication left: the version it replaced and its orphans, never set to expire.
        left = set(await self.versioned.unexpired_versions(view, target))
        replaced = {current} if current > 0 or current in left else set()
        for version in replaced:  # first: of what a kill from here on would leave, the most rows
            await self.versioned.expire_version(view, version, self.grace_seconds)
        # Versions between were allocated to runs that can no longer publish (their
        # compare-and-swap expects a pointer that has moved): drop what they left. A
        # failed run dropped its own rows, its marker (or table) last: one scan of the
        # store saved per such version (about 0.5 s at 600k keys in Redis).
        orphans = range(current + 1, target)
        for orphan in orphans:
            if orphan in left or await self.versioned.has_version(view, orphan):
                dropped = await self.versioned.drop_version(view, orphan)
                if dropped:
                    log.info(
                        "dropped %d rows of %s v%d left by an unpublished run", dropped, view.name, orphan
                    )
        stale = sorted(left - replaced - set(orphans))
        for old in stale:
            log.warning(
                "%s: data version %d was left without an expiry (a run killed after publishing?): "
                "it expires in %ds",
                view.name,
                old,
                self.grace_seconds,
            )
            await self.versioned.expire_version(view, old, self.grace_seconds)
        return tuple(sorted(replaced.union(stale)))

    def _check_stop(self) -> None:
        """Raise as a cancellation once ``stop`` is set, or once the running task has a
        cancellation request nothing took back (``cancelling()``) although no await
        raised it: redis-py's ``wait_for`` swallowed it (``__init__``). The same cleanup
        follows."""
        if self.stop is not None and self.stop.is_set():
            raise asyncio.CancelledError("stop requested")
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise asyncio.CancelledError("cancelled (the cancellation an await lost)")

    async def _mark(self, view: str, mark: Watermark) -> None:
        """Set a published version's watermark over an older version's (an incremental
        run's swap may race this one: re-read and retry), never over a newer one."""
        for _ in range(5):
            actual = await self.registry.watermark(view)
            if actual is not None and actual.data_version > mark.data_version:
                return
            try:
                await self.registry.set_watermark(view, mark, expected=actual)
                return
            except Conflict:
                continue
        log.warning("%s: watermark of data version %d not recorded (kept changing)", view, mark.data_version)

    async def _abandon(self, view: FeatureView, target: int) -> None:
        """Drop a failed run's rows, unless the pointer did move to them (a publish whose
        reply was lost): when in doubt leave them, the next publication drops them."""
        try:
            if (await self.registry.data_versions()).get(view.name) != target:
                await self.versioned.drop_version(view, target)
        except Exception:
            log.warning("rows of %s v%d stay behind until the next publication", view.name, target)

    async def _write_profile(self, profile: ProfileBuilder) -> None:
        """Store the new version's reference profile with it, before it is published (a
        server that swaps to it finds it). Drift detection needs it, serving does not:
        a store that cannot take it is logged, not a failed run."""
        if not isinstance(self.store, ProfileStore):
            return
        view, version = profile.view, profile.data_version
        try:
            await self.store.write_profile(view, version, profile.build().to_bytes())
        except Exception as e:
            log.warning("%s v%d: reference profile not stored (no drift tests): %s", view.name, version, e)

    async def _load(
        self, load: _Load, target: int, span: EventTimeRange, profile: ProfileBuilder | None = None
    ) -> tuple[int, int, int | None]:
        """Stream the source's latest rows in ``span`` into data version ``target``:
        (source rows read, rows written, newest event time read or None). Progress
        counts the latest rows loaded against the source's count of them."""
        view, ts_field = load.view, load.ts_field
        columns = [*view.join_keys, *(f.name for f in view.features), ts_field]
        counts = ScanCounts()
        loaded = written = 0
        newest: int | None = None
        async for batch in load.source.latest_batches(
            columns, view.join_keys, ts_field, load.batch_rows, span, counts
        ):
            loaded += batch.num_rows
            rows = conform(view, pa.Table.from_batches([batch]), ts_field)
            batch_newest = _newest_us(rows.column(EVENT_TIMESTAMP))
            if batch_newest is not None and (newest is None or batch_newest > newest):
                newest = batch_newest
            # create=False: the version exists (mark_version, or the current one): one that
            # is gone meanwhile (Redis lost it, or a run that published first dropped it
            # as an orphan) is not made again holding only what came after
            written += await self.store.write(view, rows, target, create=False)
            if profile is not None:
                profile.add(rows)
            if load.on_progress is not None:
                load.on_progress(Progress(loaded, counts.latest, time.monotonic() - load.t0))
            self._check_stop()  # (as a cancellation: the same cleanup)
        return (loaded if counts.in_range is None else counts.in_range), written, newest


@dataclass(frozen=True, slots=True)
class _Load:
    """What one run reads and reports to."""

    view: FeatureView
    source: OfflineSource
    batch_rows: int
    on_progress: Callable[[Progress], None] | None
    t0: float

    @property
    def ts_field(self) -> str:
        return self.view.batch_source.timestamp_field if self.view.batch_source else "event_timestamp"


def _narrowed(span: EventTimeRange) -> str:
    """What a full run over ``span`` leaves out of the version it publishes ("": nothing)."""
    if span.start_us is None and span.end_us is None:
        return ""
    lost = []
    if span.start_us is not None:
        lost.append("keys whose rows are all older than --start are no longer served")
    if span.end_us is not None:
        lost.append(
            "keys whose rows are all from --end on are no longer served, and every other key is "
            "served at its latest row before --end"
        )
    flags = " and ".join(f for f, v in (("--start", span.start_us), ("--end", span.end_us)) if v is not None)
    unbounded = f"without {flags} a run loads every key"
    return f"holds only the keys with a row in the range: {'; '.join(lost)} ({unbounded})"


def _newest_us(column: pa.ChunkedArray) -> int | None:
    """The largest event time of a conformed column (timestamp[us]), epoch µs: a finer
    source unit is floored to the µs by conform, so a watermark never passes a row it
    did not load (the next incremental run may read such a row again: an upsert)."""
    newest = pc.max(column.cast(pa.int64()))
    return None if newest.as_py() is None else int(newest.as_py())
