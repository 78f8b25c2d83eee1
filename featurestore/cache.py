"""The ``CachedSource`` that puts the in-process row cache (featurestore/lru.py: an LRU
with a TTL) in front of a remote online store.

Entries are whole view rows (every feature of the view plus the event timestamp), or
a not-found marker, keyed by (view, view layout, data version, entity key). Keying by
data version means a publication never serves a mix: the new version starts cold;
keying by layout means a changed definition never reads rows cached for the old one. Not-found is
cached too, so a hot unknown key does not hammer the store; a push through this
process invalidates the keys it writes, other processes see it within the TTL.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Hashable, Mapping, Sequence
from typing import Any, Final

import pyarrow as pa

from featurestore import metrics
from featurestore.bypass import CONSULT, DECISIONS, TRIAL, CacheBypass
from featurestore.errors import Unavailable
from featurestore.fence import WriteFence
from featurestore.lru import NOT_FOUND, LRUCache, Row, columnar
from featurestore.metric_buffers import ByLabel
from featurestore.model import FeatureView
from featurestore.rows import row_keys
from featurestore.sources.base import OnlineSource, ProfileStore, SourceState, ViewQuery, ViewRead

__all__ = ["NOT_FOUND", "CachedSource", "LRUCache", "Row", "uncached"]  # LRUCache, Row: from lru.py

log = logging.getLogger(__name__)

# Writes a store may go on with after their callers gave up (a push at its deadline),
# each for at most a cache TTL (``CachedSource._overran``); beyond, the next one is
# stopped where it is, so a hung store (Redis's write client has no socket timeout) does
# not pile them up. A stopped ClickHouse insert still runs on its
# thread, so the cache may fill before it lands: not with the default pool, which takes
# at most threads + max_queued calls (20) at a time.
MAX_ABANDONED: Final = 64


class CachedSource:
    """An ``OnlineSource`` that answers from the LRU cache and reads only the misses, but
    for a read the cache is unlikely to answer in full: that one goes past it (``bypass``,
    featurestore/bypass.py)."""

    def __init__(self, inner: OnlineSource, cache: LRUCache, bypass: CacheBypass | None = None) -> None:
        self.inner = inner
        self.cache = cache
        cache.count_for(inner.name)
        self.bypass = bypass if bypass is not None else CacheBypass(0)  # 0: every read consults
        # Raised by every write over its view's version (the cache space it writes)
        # until the store's write has ended: a read that overlapped one does not fill
        # that space; other views' fills go on (featurestore/fence.py).
        self._fence = WriteFence()
        # writes whose callers gave up, and the timer that stops each (``_overran``)
        self._abandoned: dict[asyncio.Task[int], asyncio.TimerHandle] = {}
        self._closed = False  # from close() on, a write given up on is stopped at once
        self._writes: set[asyncio.Task[int]] = set()  # the store's writes going on
        self._bypassed = ByLabel(metrics.cache_bypassed)  # per view, its bypassed-keys counter
        self._entries = metrics.cache_entries(inner.name)  # set by _fill and _invalidate, flushed
        self._reads = [metrics.cache_reads(inner.name, d) for d in DECISIONS]  # by the bypass's decision

    @property
    def name(self) -> str:
        return self.inner.name

    @property
    def kind(self) -> str:
        return self.inner.kind

    async def start(self) -> None:
        await self.inner.start()

    async def close(self) -> None:
        self._closed = True  # writes given up on from now (a push cancelled at shutdown): stopped in write
        for task in self._abandoned:
            task.cancel()
        # Every write going on (abandoned, or still awaited by its caller) ends before the
        # store closes under it, for at most a TTL: a store write that ignores its
        # cancellation must not hold the shutdown for ever.
        going = set(self._writes)
        if going:
            _, left = await asyncio.wait(going, timeout=self.cache.ttl)
            if left:
                log.warning("%d writes to store %r had not ended after %g s: closing it anyway",
                            len(left), self.name, self.cache.ttl)  # fmt: skip
        await self.inner.close()

    async def prepare(self, views: Sequence[FeatureView]) -> None:
        await self.inner.prepare(views)

    def table_uri(self, view: FeatureView) -> str:
        return self.inner.table_uri(view)

    def state(self) -> SourceState:
        return self.inner.state()

    def serving(self, versions: Mapping[str, int]) -> None:
        self.bypass.keep_only(versions.keys())
        self._fence.keep_only(lambda space: versions.get(space[0]) == space[2])
        self.cache.retire(lambda space: versions.get(space[0]) != space[2])
        self.inner.serving(versions)

    def missing(self) -> Mapping[str, str]:
        return self.inner.missing()

    async def write_profile(self, view: FeatureView, data_version: int, blob: bytes) -> None:
        if isinstance(self.inner, ProfileStore):
            await self.inner.write_profile(view, data_version, blob)

    async def read_profile(self, view: FeatureView, data_version: int) -> bytes | None:
        if isinstance(self.inner, ProfileStore):
            return await self.inner.read_profile(view, data_version)
        return None

    async def read(self, queries: Sequence[ViewQuery]) -> list[ViewRead | BaseException]:
        mode = self.bypass.consults(queries)
        self._reads[mode].inc()
        if mode == CONSULT:
            return await self._read_cached(queries)
        if mode == TRIAL and (sampled := self.bypass.samples(queries)) is not None:
            return await self._read_trial(queries, sampled)  # measuring its views on trial
        # Skipped, or on trial with no key sampled (most batch-1 reads on trial): every
        # key from the store, the cache answering only for a view whose store read
        # failed (as _read_store, inline: a coroutine less per read).
        try:
            got = list(await self.inner.read(queries))
        except Exception as e:
            got = [e] * len(queries)
        return self._or_cached(queries, got)

    async def _read_store(self, asked: Sequence[ViewQuery]) -> list[ViewRead | BaseException]:
        try:
            return list(await self.inner.read(asked))
        except Exception as e:
            return [e] * len(asked)

    def _or_cached(
        self, queries: Sequence[ViewQuery], got: list[ViewRead | BaseException]
    ) -> list[ViewRead | BaseException]:
        """The store's answers to ``queries`` (as asked), but for a view whose read failed:
        the cache's rows of it. Every view read (the common case) only counts its keys as
        bypassed: 0.33 µs in process for a batch-1 read of two views, 0.73 by the loop below."""
        if len(got) != len(queries):  # a miscounted answer: raises there (UNAVAILABLE, not a 500)
            return self._with_cached(queries, got)
        for res in got:
            if isinstance(res, BaseException):
                return self._with_cached(queries, got)
        bypassed = self._bypassed
        for q in queries:
            bypassed[q.view.name].inc(len(q.keys))
        return got

    def _with_cached(
        self, queries: Sequence[ViewQuery], got: list[ViewRead | BaseException]
    ) -> list[ViewRead | BaseException]:
        """``_or_cached`` where a view's read failed."""
        bypassed = self._bypassed
        for i, (q, res) in enumerate(zip(queries, got, strict=True)):
            name = q.view.name
            if not isinstance(res, BaseException):
                bypassed[name].inc(len(q.keys))
                continue
            # As when consulted: the cache still serves its rows, and its keys count as
            # hits and misses (not as bypassed: each key counts once).
            rows = self.cache.get_many((name, q.view.layout, q.data_version), q.keys)
            misses = [j for j, r in enumerate(rows) if r is None]
            if len(misses) < len(rows):
                metrics.cache_hits(name).inc(len(rows) - len(misses))
            if misses:
                metrics.cache_misses(name).inc(len(misses))
            got[i] = self._hits_or(q, rows, misses, res)
        return got

    def answer_late(self, queries: Sequence[ViewQuery], err: BaseException) -> list[ViewRead | BaseException]:
        """The engine gave up on a read at the deadline (the store hangs rather than
        fails: Redis paused, before the probe opens its circuit): the rows the cache
        holds, only the keys it lacks UNAVAILABLE, as when the store fails
        (``_with_cached``). Not counted as hits or misses (a consulted read counted its
        keys before the store read); the engine counts the failure."""
        out: list[ViewRead | BaseException] = []
        for q in queries:
            rows = self.cache.get_many((q.view.name, q.view.layout, q.data_version), q.keys)
            out.append(_cached_answer(q, rows, [j for j, r in enumerate(rows) if r is None], err))
        return out

    def _fill(self, q: ViewQuery, keys: list[Any], rows: list[Row], since: int, read_at: float) -> None:
        """Cache the rows read of ``keys``, unless a write of the view's version
        overlapped the read: ~0.1 µs a view (a tuple hash and a dict lookup)."""
        space = (q.view.name, q.view.layout, q.data_version)
        if self._fence.allows(space, since):
            self.cache.put_many(space, keys, rows, read_at)
            self._entries.set(len(self.cache))

    def _hits_or(
        self, q: ViewQuery, rows: list[Row | None], misses: list[int], err: BaseException
    ) -> ViewRead | BaseException:
        """A view whose store read failed: the cached rows, only the keys the store owed
        UNAVAILABLE; ``err`` itself when the cache held none of them."""
        if len(misses) < len(rows):
            metrics.view_read_failures(q.view.name, self.name, "error").inc()
        return _cached_answer(q, rows, misses, err)

    async def _read_trial(
        self, queries: Sequence[ViewQuery], sampled: dict[int, list[int]]
    ) -> list[ViewRead | BaseException]:
        """A read past the cache that measures, for its views on trial, what consulting
        would hit: their sampled keys are looked up (not served: every key is read from
        the store, as when skipped) and, missed, filled from the store's answer, for which
        they ask every feature (a cache row is a whole row). Its cost over a skipped read:
        a hash per key (mixed by numpy from 32 keys), and a lookup and maybe a fill per
        sampled key. ``sampled``: per query (by index), the positions of its sampled keys
        (``CacheBypass.samples``)."""
        asked, samples = list(queries), {}
        for qi, at in sampled.items():
            q = queries[qi]
            space = (q.view.name, q.view.layout, q.data_version)
            looked = self.cache.get_many(space, [q.keys[i] for i in at])
            missed = [i for i, r in zip(at, looked, strict=True) if r is None]  # their places in q.keys
            self.bypass.observe(q.view.name, len(at) - len(missed), len(at), True)
            if missed:  # rows to fill: whole rows
                samples[qi] = missed
                asked[qi] = ViewQuery(q.view, q.keys, range(len(q.view.features)), q.data_version)
        if not samples:  # no key to fill: the store's answers as asked
            return self._or_cached(queries, await self._read_store(queries))
        since, read_at = self._fence.now, self.cache.now()
        got = await self._read_store(asked)
        for qi, missed in samples.items():
            res, q = got[qi], queries[qi]
            if isinstance(res, BaseException):
                continue  # (answered from the cache by _or_cached; nothing to fill from)
            if res.unavailable is not None:  # a key the store owed is no row: fill nothing
                got[qi] = ViewRead(
                    res.found, res.event_ts_us, [res.columns[j] for j in q.features], res.unavailable
                )
                continue
            rows = [
                (*(c[i] for c in res.columns), res.event_ts_us[i]) if res.found[i] else NOT_FOUND
                for i in missed
            ]
            self._fill(q, [q.keys[i] for i in missed], rows, since, read_at)
            got[qi] = ViewRead(res.found, res.event_ts_us, [res.columns[j] for j in q.features])
        # Only now, with the store's whole rows cut to the features asked: a view the
        # store failed is answered from the cache in those features already.
        return self._or_cached(queries, got)

    async def _read_cached(self, queries: Sequence[ViewQuery]) -> list[ViewRead | BaseException]:
        cache = self.cache
        observe = self.bypass.observe
        cached: list[list[Row | None]] = []
        miss_queries: list[ViewQuery] = []
        miss_slots: list[tuple[int, list[int]]] = []
        for qi, q in enumerate(queries):
            name, version = q.view.name, q.data_version
            rows = cache.get_many((name, q.view.layout, version), q.keys)
            misses = [i for i, r in enumerate(rows) if r is None]
            cached.append(rows)
            hits = len(rows) - len(misses)
            observe(name, hits, len(rows))
            if hits:
                metrics.cache_hits(name).inc(hits)
            if misses:
                metrics.cache_misses(name).inc(len(misses))
                all_features = range(len(q.view.features))
                miss_queries.append(ViewQuery(q.view, [q.keys[i] for i in misses], all_features, version))
                miss_slots.append((qi, misses))

        results: list[ViewRead | BaseException | None] = [None] * len(queries)
        owed: dict[int, set[int]] = {}
        if miss_queries:
            since = self._fence.now
            read_at = cache.now()
            try:
                inner = await self.inner.read(miss_queries)
            except Exception as e:
                # Views the cache answered in full must not fail with the store.
                inner = [e] * len(miss_queries)
            for (qi, misses), got in zip(miss_slots, inner, strict=True):
                if isinstance(got, BaseException):
                    results[qi] = self._hits_or(queries[qi], cached[qi], misses, got)
                    continue
                fetched = [
                    row if ok else NOT_FOUND
                    for row, ok in zip(
                        zip(*got.columns, got.event_ts_us, strict=True), got.found, strict=True
                    )
                ]
                rows = cached[qi]
                q = queries[qi]
                if len(misses) == len(rows):  # nothing cached: the store's columns as they came
                    results[qi] = ViewRead(
                        got.found, got.event_ts_us, [got.columns[j] for j in q.features], got.unavailable
                    )
                else:
                    for i, row in zip(misses, fetched, strict=True):
                        rows[i] = row
                    if got.unavailable is not None:  # keys the store owed: None, served UNAVAILABLE
                        owed[qi] = {misses[j] for j, u in enumerate(got.unavailable) if u}
                        for i in owed[qi]:
                            rows[i] = None
                if got.unavailable is None:  # (a key the store owed is no row)
                    self._fill(q, [q.keys[i] for i in misses], fetched, since, read_at)
        for qi, q in enumerate(queries):
            if results[qi] is None:
                results[qi] = columnar(cached[qi], q.features, len(q.view.features), owed.get(qi))
        return results  # type: ignore[return-value]

    async def write(
        self, view: FeatureView, rows: pa.Table, data_version: int, *, create: bool = True
    ) -> int:
        """Write through the store, dropping the written keys from the cache before the
        write starts and again once it has ended. Reads fill nothing meanwhile: until
        the store's write has *ended*, which a caller that gave up (a push at its
        deadline) does not wait for: the write goes on (ClickHouse's insert would go on
        on its thread anyway, cancelled or not), and whenever it ends, it drops the keys
        again and lets reads fill."""
        self._refuse_if_closed(view)
        space = (view.name, view.layout, data_version)
        try:
            keys = row_keys(rows, view.join_keys)
        except Exception:  # rows the store cannot key are not written either
            keys = []
        self._fence.raise_(space)
        self._invalidate(space, keys)
        task = asyncio.ensure_future(self.inner.write(view, rows, data_version, create=create))
        self._writes.add(task)
        task.add_done_callback(lambda t: self._written(space, keys, t))
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            if not task.done():
                if not self._closed and len(self._abandoned) < MAX_ABANDONED:
                    loop = asyncio.get_running_loop()
                    self._abandoned[task] = loop.call_later(self.cache.ttl, self._overran, task, view.name)
                else:  # too many going on, or closing (close() awaits its end)
                    task.cancel()
            raise

    def _refuse_if_closed(self, view: FeatureView) -> None:
        if self._closed:  # its close() would neither stop nor await the write
            raise Unavailable(
                f"store {self.name!r} is closed: the write of view {view.name!r} was not started"
            )

    def _overran(self, task: asyncio.Task[int], view: str) -> None:
        """A write given up on that has gone on for a cache TTL is taken as hung and
        stopped: until it ends, its fence keeps this process from caching its view's
        version at all (every read of it goes to the store). A TTL, because stopping it
        lowers the fence and drops its keys, and should its rows land later anyway (a
        ClickHouse insert goes on in its thread) a row cached meanwhile is stale here for
        at most a TTL: what every other process's cache allows after any push."""
        log.warning(
            "a write to view %r that its caller gave up on has not ended after %g s (the cache TTL): stopped",
            view,
            self.cache.ttl,
        )
        task.cancel()

    def _written(
        self, space: tuple[str, str, int], keys: Sequence[Hashable], task: asyncio.Task[int]
    ) -> None:
        """The store's write has ended: also a failed one, some batches may have landed."""
        self._fence.lower(space)
        self._invalidate(space, keys)
        self._writes.discard(task)
        timer = self._abandoned.pop(task, None)
        if timer is not None:
            timer.cancel()
            if not task.cancelled() and task.exception() is not None:
                log.warning(
                    "a write to view %r that its caller gave up on failed: %s", space[0], task.exception()
                )

    def _invalidate(self, space: tuple[str, str, int], keys: Sequence[Hashable]) -> None:
        for key in keys:
            self.cache.invalidate(space, key)
        self._entries.set(len(self.cache))


def uncached(store: OnlineSource) -> OnlineSource:
    """The store behind a row cache (the store itself if it has none)."""
    return store.inner if isinstance(store, CachedSource) else store


def _cached_answer(
    q: ViewQuery, rows: list[Row | None], misses: list[int], err: BaseException
) -> ViewRead | BaseException:
    """A view whose store read failed or was given up: the cached rows, the keys the cache
    lacks (``misses``) UNAVAILABLE; ``err`` itself when it holds none of them."""
    if len(misses) == len(rows):
        return err
    return columnar(rows, q.features, len(q.view.features), unavailable=set(misses))
