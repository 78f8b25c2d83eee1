"""The row cache: whole view rows by (view, layout, data version) and entity key, with a
TTL, evicting (approximately) the least recently used row (CLOCK), optionally behind a
TinyLFU admission sketch (featurestore/admission.py). ``CachedSource``
(featurestore/cache.py) puts it in front of a store.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from typing import Any, Final

from featurestore import metrics
from featurestore.admission import FrequencySketch
from featurestore.sources.base import ViewRead

# A cached row: (feature values in view order..., event_ts_us), or NOT_FOUND.
Row = tuple[Any, ...]
NOT_FOUND: Final = ()

_MAX_WALK = 256  # second chances one eviction may give before it evicts anyway


class LRUCache:
    """Bounded row cache with per-entry expiry, evicting (approximately) the least
    recently used entry. Single-threaded: used from the event loop.

    Entries live in one dict per *space* (a view, its layout and a data version), keyed
    by the bare entity key: a lookup hashes an int or a str, not a built 4-tuple. A hit
    touches nothing but a set of recently read keys; recency is CLOCK's (second chance):
    the eviction hand walks insertion order, and an entry read since the hand last passed
    it goes to the back instead of out. An exact LRU moved each hit to the end of an
    OrderedDict keyed by (view, layout, version, key): at batch 100 over 200k entries,
    153 µs per view against 73 here, more than a loopback Redis MGET of the same rows
    (benchmarks/RESULTS.md, "cache").

    With ``admission`` (a TinyLFU sketch, featurestore/admission.py), a put into a full
    cache counts each key and admits it only if it is more frequent than the entry the
    hand would evict (an expired victim always goes); without, every put evicts. Keys
    are counted per space, on the miss path only: counted by bare entity key, a new data
    version's row tied with its own dead predecessor and was refused until that one
    expired (a full cache served the store for a TTL after every publication). The
    sketch's key is ``hash(key) ^ hash(space)``, an int: a (space, key) tuple was hashed
    anew at every count and comparison, its nested space tuple each time (a 1-key fill into
    a full 1,000-row cache, counted, compared and rejected: 4.9 -> 4.3 µs, timed alone).
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
        self._spaces: dict[Hashable, dict[Hashable, tuple[float, Row]]] = {}
        self._touched: dict[Hashable, set[Hashable]] = {}  # per space: read since the hand passed
        self._order: OrderedDict[tuple[Hashable, Hashable], None] = OrderedDict()  # the hand's walk
        self.admission = admission
        self._retired: frozenset[Hashable] = frozenset()  # spaces no longer read
        # made by count_for: not here, or every process exported a store="" series beside
        # its stores' (a cache on its own makes them at its first eviction or rejection)
        self._evictions: Any = None
        self._rejections: Any = None

    def retire(self, gone: Callable[[Any], bool]) -> None:
        """Spaces now held for which ``gone(space)`` is true are no longer read (a data
        version replaced by a publication, a dropped view): their rows lose every
        admission contest, as expired ones do. Otherwise, counted as often as the new
        version's rows, they kept those out until they expired (a full cache re-warmed
        slower than without admission)."""
        self._retired = frozenset(s for s in self._spaces if gone(s))

    def count_for(self, store: str) -> None:
        """Count evictions and rejections with ``store`` as their label (``CachedSource``
        calls it: one cache per store; "" for a cache on its own)."""
        self._evictions = metrics.cache_evictions(store)
        self._rejections = metrics.cache_rejections(store)

    def __len__(self) -> int:
        return len(self._order)

    def now(self) -> float:
        """The cache's clock (what ``read_at`` is measured by)."""
        return self._clock()

    def get_many(self, space: Hashable, keys: Sequence[Hashable]) -> list[Row | None]:
        """The cached row (or NOT_FOUND) of each key, None where absent or expired."""
        entries = self._spaces.get(space)
        if entries is None:
            return [None] * len(keys)
        now = self._clock()
        get = entries.get
        found = [get(k) for k in keys]
        rows = [e[1] if e is not None and e[0] >= now else None for e in found]
        self._touched[space].update([k for k, r in zip(keys, rows, strict=True) if r is not None])
        return rows

    def put_many(
        self, space: Hashable, keys: Sequence[Hashable], rows: Sequence[Row], read_at: float | None = None
    ) -> None:
        """``read_at``: when the rows were asked of the store (by this cache's clock);
        they expire a TTL after that, so the TTL bounds how stale a served row can be."""
        sketch = self.admission
        salt = hash(space)
        if sketch is not None:
            sketch.increment_many([hash(k) ^ salt for k in keys])
        now = self._clock()
        expires = (now if read_at is None else min(read_at, now)) + self.ttl
        entries = self._spaces.get(space)
        if entries is None:
            entries = self._spaces[space] = {}
            self._touched[space] = set()
        order = self._order
        evicted = rejected = 0
        for k, r in zip(keys, rows, strict=True):
            if k in entries:  # a refreshed (expired) entry: to the back
                entries[k] = (expires, r)
                order.move_to_end((space, k))
                continue
            if len(order) >= self.max_entries:
                # Room first, then the newcomer goes behind the hand.
                victim = self._victim()
                if (
                    sketch is not None
                    and victim[0] not in self._retired  # a victim nobody reads any more always goes
                    and self._spaces[victim[0]][victim[1]][0] >= now  # an expired victim always goes
                    and not sketch.admits(hash(k) ^ salt, hash(victim[1]) ^ hash(victim[0]))
                ):
                    # The victim won: it goes round again, so the next newcomer meets
                    # another entry (one resident that collided high in the sketch would
                    # otherwise turn every newcomer away).
                    self._order.move_to_end(victim)
                    rejected += 1
                    continue
                self._remove(victim, keep=space)
                evicted += 1
            entries[k] = (expires, r)
            order[space, k] = None  # a new key: at the back already (one hash of the pair, not two)
        if not entries:  # every key rejected into a new space
            del self._spaces[space], self._touched[space]
        if (evicted or rejected) and self._evictions is None:
            self.count_for("")
        if evicted:
            self._evictions.inc(evicted)
        if rejected:
            self._rejections.inc(rejected)

    def _victim(self) -> tuple[Hashable, Hashable]:
        """The entry the hand stops at: the first not read since the hand last passed it,
        or the one it reaches after ``_MAX_WALK`` second chances (when every entry was
        read, a full round over 200k entries would hold the loop ~40 ms for one request)."""
        order = self._order
        for _ in range(_MAX_WALK):
            victim = next(iter(order))
            touched = self._touched[victim[0]]
            if victim[1] not in touched:
                return victim
            touched.discard(victim[1])
            order.move_to_end(victim)
        victim = next(iter(order))
        self._touched[victim[0]].discard(victim[1])
        return victim

    def _remove(self, item: tuple[Hashable, Hashable], keep: Hashable = None) -> None:
        """Drop one entry; a space it empties goes too (an old data version aged out),
        but for ``keep``, the space being filled."""
        space, key = item
        del self._order[item]
        entries = self._spaces[space]
        del entries[key]
        if entries or space == keep:
            self._touched[space].discard(key)
        else:
            del self._spaces[space], self._touched[space]

    def get(self, space: Hashable, key: Hashable) -> Row | None:
        return self.get_many(space, [key])[0]

    def put(self, space: Hashable, key: Hashable, row: Row) -> None:
        self.put_many(space, [key], [row])

    def invalidate(self, space: Hashable, key: Hashable) -> None:
        if key in self._spaces.get(space, ()):
            self._remove((space, key))

    def clear(self) -> None:
        self._spaces.clear()
        self._touched.clear()
        self._order.clear()


def columnar(
    rows: list[Any], features: Sequence[int], width: int, unavailable: set[int] | None = None
) -> ViewRead:
    """Cached rows (each the view's whole row and its event time; ``NOT_FOUND``) as a
    store's columnar answer in ``features``; ``unavailable``: positions of keys the
    store owed (their row None)."""
    if unavailable is None and NOT_FOUND not in rows and None not in rows:  # every key cached
        cols = list(zip(*rows, strict=True)) if rows else [()] * (width + 1)
        return ViewRead(
            found=[True] * len(rows), event_ts_us=list(cols[width]), columns=[list(cols[j]) for j in features]
        )
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
