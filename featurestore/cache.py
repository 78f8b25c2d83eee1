"""In-process LRU cache with a TTL, and the ``CachedSource`` that puts it in front of a
remote online store.

Entries are whole view rows (every feature of the view plus the event timestamp), or
a not-found marker, keyed by (view, view layout, data version, entity key). Keying by
data version means a publication never serves a mix: the new version starts cold;
keying by layout means a changed definition never reads rows cached for the old one. Not-found is
cached too, so a hot unknown key does not hammer the store; a push through this
process invalidates the keys it writes, other processes see it within the TTL.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any, Final

import pyarrow as pa

from featurestore import metrics
from featurestore.admission import FrequencySketch
from featurestore.model import FeatureView
from featurestore.rows import row_keys
from featurestore.sources.base import OnlineSource, ProfileStore, SourceState, ViewQuery, ViewRead

# A cached row: (feature values in view order..., event_ts_us), or NOT_FOUND.
Row = tuple[Any, ...]
NOT_FOUND: Final = ()


class LRUCache:
    """Bounded LRU with per-entry expiry. Single-threaded: used from the event loop.

    The bulk methods do their per-key work in comprehensions over C-level dict
    operations: on a batch-100 join that is a few microseconds per view instead of
    a Python method call per key.

    With ``admission`` (a TinyLFU sketch, featurestore/admission.py), a put into a full
    cache counts each key and admits it only if it is more frequent than the entry it
    would evict (an expired victim always goes); without, every put evicts (plain LRU).
    """

    def __init__(
        self,
        max_entries: int,
        ttl_seconds: float,
        clock: Callable[[], float] = time.monotonic,
        admission: FrequencySketch | None = None,
    ) -> None:
        if max_entries <= 0:
            raise ValueError("max_entries must be positive")
        self.max_entries = max_entries
        self.ttl = ttl_seconds
        self._clock = clock
        self._data: OrderedDict[Hashable, tuple[float, Row]] = OrderedDict()
        self.admission = admission

    def __len__(self) -> int:
        return len(self._data)

    def get_many(self, keys: Sequence[Hashable]) -> list[Row | None]:
        """The cached row (or NOT_FOUND) of each key, None where absent or expired."""
        now = self._clock()
        get = self._data.get
        entries = [get(k) for k in keys]
        rows = [e[1] if e is not None and e[0] >= now else None for e in entries]
        move = self._data.move_to_end
        for k, r in zip(keys, rows, strict=True):
            if r is not None:
                move(k)
        return rows

    def put_many(self, keys: Sequence[Hashable], rows: Sequence[Row]) -> None:
        sketch = self.admission
        if sketch is not None:
            sketch.increment_many(keys)
            if len(self._data) + len(keys) > self.max_entries:
                self._admit_many(sketch, keys, rows)
                return
        expires = self._clock() + self.ttl
        data = self._data
        move = data.move_to_end
        for k, r in zip(keys, rows, strict=True):
            data[k] = (expires, r)
            move(k)  # a refreshed (expired) entry becomes most recent too
        excess = len(data) - self.max_entries
        if excess > 0:
            pop = data.popitem
            for _ in range(excess):
                pop(last=False)
            metrics.CACHE_EVICTIONS.inc(excess)

    def _admit_many(self, sketch: FrequencySketch, keys: Sequence[Hashable], rows: Sequence[Row]) -> None:
        """The full-cache put: each key against the LRU tail, one at a time."""
        now = self._clock()
        expires = now + self.ttl
        data = self._data
        evicted = rejected = 0
        for k, r in zip(keys, rows, strict=True):
            if k in data or len(data) < self.max_entries:
                data[k] = (expires, r)
                data.move_to_end(k)
                continue
            victim = next(iter(data))
            if data[victim][0] < now or sketch.admits(k, victim):
                del data[victim]
                data[k] = (expires, r)
                evicted += 1
            else:
                rejected += 1
        if evicted:
            metrics.CACHE_EVICTIONS.inc(evicted)
        if rejected:
            metrics.CACHE_REJECTIONS.inc(rejected)

    def get(self, key: Hashable) -> Row | None:
        return self.get_many([key])[0]

    def put(self, key: Hashable, row: Row) -> None:
        self.put_many([key], [row])

    def invalidate(self, key: Hashable) -> None:
        self._data.pop(key, None)

    def clear(self) -> None:
        self._data.clear()


class CachedSource:
    """An ``OnlineSource`` that answers from the LRU cache and reads only the misses."""

    def __init__(self, inner: OnlineSource, cache: LRUCache) -> None:
        self.inner = inner
        self.cache = cache
        # Bumped by every write: a read that overlapped one does not fill the cache,
        # or it could put back a row the write had just invalidated.
        self._epoch = 0

    @property
    def name(self) -> str:
        return self.inner.name

    @property
    def kind(self) -> str:
        return self.inner.kind

    async def start(self) -> None:
        await self.inner.start()

    async def close(self) -> None:
        await self.inner.close()

    async def prepare(self, views: Sequence[FeatureView]) -> None:
        await self.inner.prepare(views)

    def table_uri(self, view: FeatureView) -> str:
        return self.inner.table_uri(view)

    def state(self) -> SourceState:
        return self.inner.state()

    def serving(self, versions: Mapping[str, int]) -> None:
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
        cache = self.cache
        cached: list[list[Row | None]] = []
        cache_keys: list[list[Hashable]] = []
        miss_queries: list[ViewQuery] = []
        miss_slots: list[tuple[int, list[int]]] = []
        for qi, q in enumerate(queries):
            name, layout, version = q.view.name, q.view.layout, q.data_version
            ck: list[Hashable] = [(name, layout, version, k) for k in q.keys]
            rows = cache.get_many(ck)
            misses = [i for i, r in enumerate(rows) if r is None]
            cached.append(rows)
            cache_keys.append(ck)
            if len(misses) < len(rows):
                metrics.cache_hits(name).inc(len(rows) - len(misses))
            if misses:
                metrics.cache_misses(name).inc(len(misses))
                all_features = range(len(q.view.features))
                miss_queries.append(ViewQuery(q.view, [q.keys[i] for i in misses], all_features, version))
                miss_slots.append((qi, misses))

        results: list[ViewRead | BaseException | None] = [None] * len(queries)
        if miss_queries:
            epoch = self._epoch
            try:
                inner = await self.inner.read(miss_queries)
            except Exception as e:
                # Views the cache answered in full must not fail with the store.
                inner = [e] * len(miss_queries)
            fill = epoch == self._epoch
            for (qi, misses), got in zip(miss_slots, inner, strict=True):
                if isinstance(got, BaseException):
                    q = queries[qi]
                    if len(misses) == len(q.keys):
                        results[qi] = got
                    else:
                        # Serve the hits; only the keys the store owed are UNAVAILABLE.
                        metrics.view_read_failures(q.view.name, self.name, "error").inc()
                        results[qi] = _columnar(
                            cached[qi], q.features, len(q.view.features), unavailable=set(misses)
                        )
                    continue
                fetched = [
                    row if ok else NOT_FOUND
                    for row, ok in zip(
                        zip(*got.columns, got.event_ts_us, strict=True), got.found, strict=True
                    )
                ]
                rows = cached[qi]
                for i, row in zip(misses, fetched, strict=True):
                    rows[i] = row
                if fill:
                    ck = cache_keys[qi]
                    cache.put_many([ck[i] for i in misses], fetched)
            metrics.CACHE_ENTRIES.set(len(cache))
        for qi, q in enumerate(queries):
            if results[qi] is None:
                results[qi] = _columnar(cached[qi], q.features, len(q.view.features))
        return results  # type: ignore[return-value]

    async def write(self, view: FeatureView, rows: pa.Table, data_version: int) -> int:
        try:
            return await self.inner.write(view, rows, data_version)
        finally:
            # Also after a failed write: some batches may have landed. Reads that
            # overlapped the write see the bumped epoch and leave the cache alone.
            self._epoch += 1
            self._invalidate(view, rows, data_version)

    def _invalidate(self, view: FeatureView, rows: pa.Table, data_version: int) -> None:
        try:
            keys = row_keys(rows, view.join_keys)
        except Exception:  # rows the store could not key were not written either
            return
        for key in keys:
            self.cache.invalidate((view.name, view.layout, data_version, key))


def _columnar(
    rows: list[Any], features: Sequence[int], width: int, unavailable: set[int] | None = None
) -> ViewRead:
    blank = (None,) * (width + 1)
    # None: a key the store owed and did not deliver (only with ``unavailable``)
    found = [r is not NOT_FOUND and r is not None for r in rows]
    full = [r if f else blank for r, f in zip(rows, found, strict=True)]
    missing = [i in unavailable for i in range(len(rows))] if unavailable else None
    cols = list(zip(*full, strict=True)) if full else [()] * (width + 1)
    return ViewRead(
        found=found,
        event_ts_us=list(cols[width]),
        columns=[list(cols[j]) for j in features],
        unavailable=missing,
    )
