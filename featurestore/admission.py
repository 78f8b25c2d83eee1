"""TinyLFU admission for the row cache: when the cache is full, a key read from the store
may take the place of the entry the eviction hand stops at (the first not read since the
hand last passed it: CLOCK's approximate LRU) only if a frequency sketch says it has
been asked for more often than that entry.

Without it every miss of a full cache evicts a key, so uniformly random keys over a
key space larger than the cache churn it: each miss pays a fill that evicts a key
nobody asks for again. With it such a newcomer (seen once) loses to the resident
entry (seen at least as often) and the cache stays as it is; a key that keeps coming
back wins within a few misses. (Einziger, Friedman, Manes: "TinyLFU: A Highly
Efficient Cache Admission Policy", 2017; Caffeine pairs it with a window LRU.)

The sketch counts what reaches the store (the misses), not the hits: a resident
entry is only ever compared while the hand stops at it, i.e. when nobody has asked for
it for a whole turn of the hand, and counting hits would cost a sketch update per cached
value on the hottest path (measured: `benchmarks/cache_admission.py`).
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from typing import Final

import numpy as np

# 4-bit counters: a count saturates at 15, as in TinyLFU. Stored one per byte, because a
# nibble read-modify-write costs Python two more operations per counter for half the
# memory (16-32 bytes per cache entry here, against ~0.5 KB for the entry itself).
MAX_COUNT: Final = 15
_MASK64: Final = (1 << 64) - 1
_GOLDEN: Final = 0x9E3779B97F4A7C15  # Fibonacci hashing: spreads sequential integer keys
# From this many keys, one call counts them with numpy: the Python loop costs ~1 µs a key,
# and a batch-100 join refilling two views after their rows expired counted 200 keys per
# request (a third of its CPU with the cache on: benchmarks/RESULTS.md, "featurestore vs Feast").
_VECTOR_FROM: Final = 16


class FrequencySketch:
    """Count-min sketch of depth 4 with saturating counters and periodic aging.

    ``capacity`` is the cache size it serves: the table has at least 16 counters per
    entry (a power of two), and after ``sample_factor * capacity`` increments every
    counter is halved, so old popularity fades and the sketch follows the workload.
    """

    __slots__ = ("_additions", "_mask", "_sample", "_table", "_view")

    def __init__(self, capacity: int, sample_factor: int = 10) -> None:
        if capacity <= 0:
            raise ValueError("capacity must be positive")
        width = 1 << max(6, (16 * capacity - 1).bit_length())
        self._table = bytearray(width)  # scalar reads (frequency) are fastest on a bytearray
        self._view = np.frombuffer(self._table, dtype=np.uint8)  # the same bytes, for batches
        self._mask = width - 1
        self._sample = max(sample_factor * capacity, 1)
        self._additions = 0

    def frequency(self, key: Hashable) -> int:
        """How often ``key`` was counted (an overestimate by collisions, never under)."""
        h = (hash(key) * _GOLDEN) & _MASK64
        h ^= h >> 29
        m, t = self._mask, self._table
        a, b = h >> 32, h | 1
        return min(t[a & m], t[(a + b) & m], t[(a + 2 * b) & m], t[(a + 3 * b) & m])

    def increment_many(self, keys: Iterable[Hashable]) -> None:
        """Count one more occurrence of each key (a key listed twice counts twice)."""
        keys = keys if isinstance(keys, list) else list(keys)
        if len(keys) >= _VECTOR_FROM:
            self._increment_vector(keys)
        else:
            m, t = self._mask, self._table
            for key in keys:
                h = (hash(key) * _GOLDEN) & _MASK64
                h ^= h >> 29
                a, b = h >> 32, h | 1
                for i in (a & m, (a + b) & m, (a + 2 * b) & m, (a + 3 * b) & m):
                    if t[i] < MAX_COUNT:
                        t[i] += 1
        self._additions += len(keys)
        if self._additions >= self._sample:
            self.age()

    def _increment_vector(self, keys: list[Hashable]) -> None:
        """The loop above in numpy: the same counters (uint64 arithmetic wraps as the
        masked Python integers do), each raised by its number of hits, saturating."""
        h = np.array([hash(k) for k in keys], dtype=np.int64).view(np.uint64) * np.uint64(_GOLDEN)
        h ^= h >> np.uint64(29)
        a, b = h >> np.uint64(32), h | np.uint64(1)
        m = np.uint64(self._mask)
        idx = np.concatenate([(a + np.uint64(i) * b) & m for i in range(4)]).astype(np.intp)
        at, hits = np.unique(idx, return_counts=True)
        self._view[at] = np.minimum(self._view[at] + hits, MAX_COUNT)

    def increment(self, key: Hashable) -> None:
        self.increment_many((key,))

    def age(self) -> None:
        """Halve every counter (TinyLFU's reset)."""
        self._view >>= 1  # in place: the bytearray and its view stay one buffer
        self._additions //= 2

    def admits(self, candidate: Hashable, victim: Hashable) -> bool:
        """Whether ``candidate`` may replace ``victim``: strictly more frequent."""
        return self.frequency(candidate) > self.frequency(victim)
