"""A cache bypass trial's sample (featurestore/bypass.py): which keys of a view on trial
are looked up in the cache, and the trial's progress."""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Final

import numpy as np

# A trial looks 1 key in TRIAL_SAMPLE up, in windows of 500 sampled keys (featurestore/bypass.py's docstring).
# 32, not 16 (until 2026-12-05): a read on trial of two views of 100 keys each, a trivial
# store behind the cache, 37.4 -> 32.5 µs of CPU in process (of 1 key: 7.8 -> 7.0; a skipped
# read 9.0 and 4.7; a one-off script); the price: a view needs ~32,000 keys read in two
# TTLs for a trial's whole window, not 16,000. Over Redis: benchmarks.cache_cpu.
TRIAL_SAMPLE: Final = 32
TRIAL_WINDOW: Final = 500
# A key is sampled when its hash, salted, mixed by Fibonacci hashing (so ids in arithmetic
# progression spread) lands in the lowest 1/TRIAL_SAMPLE of 64 bits. From _VECTOR_FROM keys a
# read's keys are mixed by numpy: with a bound method per key (hash((key, salt)) % 16), a
# batch-100 read on trial (two views of 100 keys, a trivial store behind the cache) took
# 49.5 µs of CPU in process, 42.5 with numpy (2026-12-04, a one-off script).
_MASK64: Final = (1 << 64) - 1
_GOLDEN: Final = 0x9E3779B97F4A7C15
_SALT_MIX: Final = 0xBF58476D1CE4E5B9
_SAMPLE_BELOW: Final = (1 << 64) // TRIAL_SAMPLE
_VECTOR_FROM: Final = 32  # numpy's set-up pays from ~30 keys


class Trial:
    """A view's trial: keys left to load, then the measuring window's keys left and
    hits, the previous window's rate (-1: none yet); from ``settled`` (a TTL after it
    began) rows it loaded expire, as in steady state; it ends by ``ends`` (two TTLs)."""

    __slots__ = ("ends", "hits", "left", "load", "prev", "salt", "settled")

    def __init__(self, now: float, ttl: float, salt: int) -> None:
        self.load = self.left = float(TRIAL_WINDOW)
        self.hits = 0.0
        self.prev = -1.0
        self.settled = now + ttl
        self.ends = now + 2 * ttl
        self.salt = (salt * _SALT_MIX) & _MASK64  # a sample per trial, not by an id's residue

    def sampled(self, key: Hashable) -> bool:
        return (((hash(key) & _MASK64) ^ self.salt) * _GOLDEN) & _MASK64 < _SAMPLE_BELOW

    def positions(self, keys: Sequence[Hashable], hashed: np.ndarray | None = None) -> list[int]:
        """Where the sampled keys are in ``keys`` (``sampled`` of each, in one pass);
        ``hashed``: ``key_hashes(keys)``, when another view's trial has them already."""
        if hashed is None:
            if len(keys) < _VECTOR_FROM:  # (sampled's test, inline: no call per key)
                salt = self.salt
                return [
                    i
                    for i, k in enumerate(keys)
                    if (((hash(k) & _MASK64) ^ salt) * _GOLDEN) & _MASK64 < _SAMPLE_BELOW
                ]
            hashed = _hashes(keys)
        mixed = (hashed ^ np.uint64(self.salt)) * np.uint64(_GOLDEN)  # (uint64 arrays wrap, as & _MASK64)
        return np.flatnonzero(mixed < np.uint64(_SAMPLE_BELOW)).tolist()


def key_hashes(keys: Sequence[Hashable]) -> np.ndarray | None:
    """The keys' hashes as uint64, for ``Trial.positions`` of several views keyed alike (one
    hash per key, not one per view); None below ``_VECTOR_FROM`` keys (the scalar test)."""
    return None if len(keys) < _VECTOR_FROM else _hashes(keys)


def _hashes(keys: Sequence[Hashable]) -> np.ndarray:
    return np.fromiter(map(hash, keys), dtype=np.int64, count=len(keys)).view(np.uint64)
