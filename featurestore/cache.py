"""In-process LRU cache with a TTL, and the ``CachedSource`` that puts it in front of a
remote online store.

Entries are whole view rows (every feature of the view plus the event timestamp), or
a not-found marker, keyed by (view, data version, entity key). Keying by data version
means a publication never serves a mix: the new version starts cold. Not-found is
cached too, so a hot unknown key does not hammer the store; a push through this
process invalidates the keys it writes, other processes see it within the TTL.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any, Final

import pyarrow as pa

from featurestore import metrics
from featurestore.model import FeatureView
from featurestore.sources.arrow import row_keys
from featurestore.sources.base import OnlineSource, SourceState, ViewQuery, ViewRead

# A cached row: (feature values in view order..., event_ts_us), or NOT_FOUND.
Row = tuple[Any, ...]
NOT_FOUND: Final = ()
_MISS: Final = object()


@dataclass(frozen=True, slots=True)
class CacheConfig:
    enabled: bool = True
    max_entries: int = 200_000
    ttl_seconds: float = 30.0


class LRUCache:
    """Bounded LRU with per-entry expiry. Single-threaded: used from the event loop."""

    def __init__(
        self, max_entries: int, ttl_seconds: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if max_entries <= 0:
            raise ValueError("max_entries must be positive")
        self.max_entries = max_entries
        self.ttl = ttl_seconds
        self._clock = clock
        self._data: OrderedDict[Hashable, tuple[float, Row]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._data)

    def get(self, key: Hashable) -> Row | object:
        """The row, NOT_FOUND, or the private miss sentinel."""
        item = self._data.get(key)
        if item is None:
            return _MISS
        expires, row = item
        if expires < self._clock():
            del self._data[key]
            return _MISS
        self._data.move_to_end(key)
        return row

    def put(self, key: Hashable, row: Row) -> None:
        self._data[key] = (self._clock() + self.ttl, row)
        self._data.move_to_end(key)
        if len(self._data) > self.max_entries:
            self._data.popitem(last=False)
            metrics.CACHE_EVICTIONS.inc()

    def invalidate(self, key: Hashable) -> None:
        self._data.pop(key, None)

    def clear(self) -> None:
        self._data.clear()


def is_miss(value: object) -> bool:
    return value is _MISS


class CachedSource:
    """An ``OnlineSource`` that answers from the LRU cache and reads only the misses."""

    def __init__(self, inner: OnlineSource, cache: LRUCache) -> None:
        self.inner = inner
        self.cache = cache

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

    async def read(self, queries: Sequence[ViewQuery]) -> list[ViewRead | BaseException]:
        cache = self.cache
        found_rows: list[list[Row | object]] = []
        miss_queries: list[ViewQuery] = []
        miss_slots: list[tuple[int, list[int]]] = []
        for qi, q in enumerate(queries):
            name, version = q.view.name, q.data_version
            rows = [cache.get((name, version, k)) for k in q.keys]
            misses = [i for i, r in enumerate(rows) if r is _MISS]
            found_rows.append(rows)
            n_hit = len(rows) - len(misses)
            if n_hit:
                metrics.cache_hits(name).inc(n_hit)
            if misses:
                metrics.cache_misses(name).inc(len(misses))
                all_features = range(len(q.view.features))
                miss_queries.append(ViewQuery(q.view, [q.keys[i] for i in misses], all_features, version))
                miss_slots.append((qi, misses))

        results: list[ViewRead | BaseException | None] = [None] * len(queries)
        if miss_queries:
            inner = await self.inner.read(miss_queries)
            for (qi, misses), mq, got in zip(miss_slots, miss_queries, inner, strict=True):
                if isinstance(got, BaseException):
                    results[qi] = got
                    continue
                rows = found_rows[qi]
                fetched = zip(*got.columns, got.event_ts_us, strict=True)
                for i, key, row, ok in zip(misses, mq.keys, fetched, got.found, strict=True):
                    value = row if ok else NOT_FOUND
                    rows[i] = value
                    cache.put((mq.view.name, mq.data_version, key), value)
            metrics.CACHE_ENTRIES.set(len(cache))
        for qi, q in enumerate(queries):
            if results[qi] is None:
                results[qi] = _columnar(found_rows[qi], q.features, len(q.view.features))
        return results  # type: ignore[return-value]

    async def write(self, view: FeatureView, rows: pa.Table, data_version: int) -> int:
        n = await self.inner.write(view, rows, data_version)
        for key in row_keys(rows, view.join_keys):
            self.cache.invalidate((view.name, data_version, key))
        return n


def _columnar(rows: list[Any], features: Sequence[int], width: int) -> ViewRead:
    found = [r is not NOT_FOUND for r in rows]
    blank = (None,) * (width + 1)
    full = [r if r is not NOT_FOUND else blank for r in rows]
    cols = list(zip(*full, strict=True)) if full else [()] * (width + 1)
    return ViewRead(
        found=found,
        event_ts_us=list(cols[width]),
        columns=[list(cols[j]) for j in features],
    )
