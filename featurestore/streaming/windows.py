"""Sliding windows at read time, from the tile records of many keys at once (numpy).

A window of ``k`` tiles read at ``now`` covers the tiles ``now_tile - k + 1 ..
now_tile`` (``now_tile = now // tile``): the tile in progress and the ``k - 1`` before
it, so a value moves as time passes even with no new events, at tile granularity.
Tiles from the reader's future (a producer's clock ahead) are left out.

The records of every key read are stacked into one matrix and reduced per key with
``reduceat`` per window, whatever the number of keys: no Python per tile or per key
beyond the final ``tolist``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

from featurestore.streaming.tiles import TileLayout


class Windows(NamedTuple):
    found: list[bool]  # the key has an event in its longest window
    event_ts_us: list[int]  # its newest event in that window
    columns: list[list[Any]]  # per aggregation (in layout order), per key; None where undefined


def compute(layout: TileLayout, blobs: Sequence[bytes | None], now_us: int, wanted: Sequence[int]) -> Windows:
    """Window values of aggregations ``wanted`` (indices into layout.aggregations)."""
    n = len(blobs)
    width = layout.width
    rec_bytes = layout.record_bytes
    have = [i for i, b in enumerate(blobs) if b]
    found = [False] * n
    ts_out = [0] * n
    cols: list[list[Any]] = [[None] * n for _ in wanted]
    if not have:
        return Windows(found, ts_out, cols)
    counts = np.fromiter((len(blobs[i]) // rec_bytes for i in have), dtype=np.int64, count=len(have))  # type: ignore[arg-type]
    data = np.frombuffer(b"".join(blobs[i] for i in have), dtype="<f8").reshape(-1, width)  # type: ignore[misc]
    starts = np.zeros(len(have), dtype=np.int64)
    np.cumsum(counts[:-1], out=starts[1:])
    owner = np.repeat(np.arange(len(have)), counts)
    age = (now_us // layout.tile_us) - data[:, 0]

    longest = (age >= 0) & (age < layout.retention_tiles - 1)
    newest = np.maximum.reduceat(np.where(longest, data[:, 1], -np.inf), starts)
    live = newest > -np.inf
    every = len(have) == n and bool(live.all())  # the common case: no per-key remapping
    masks: dict[int, np.ndarray] = {}
    for j, a in enumerate(layout.aggregations[i] for i in wanted):
        mask = masks.get(a.window_tiles)
        if mask is None:
            mask = masks[a.window_tiles] = (age >= 0) & (age < a.window_tiles)
        values = _aggregate(a.function, a.slots, data, mask, starts, owner)
        if every:
            cols[j] = values
            continue
        out = cols[j]
        for k, (i, v) in enumerate(zip(have, values, strict=True)):
            if live[k]:
                out[i] = v
    if every:
        return Windows([True] * n, newest.astype(np.int64).tolist(), cols)
    for k, i in enumerate(have):
        if live[k]:
            found[i] = True
            ts_out[i] = int(newest[k])
    return Windows(found, ts_out, cols)


def _aggregate(
    function: str,
    slots: tuple[int, ...],
    data: np.ndarray,
    mask: np.ndarray,
    starts: np.ndarray,
    owner: np.ndarray,
) -> list[Any]:
    s = slots[0]
    if function == "count":
        return np.add.reduceat(np.where(mask, data[:, s], 0.0), starts).astype(np.int64).tolist()  # type: ignore[no-any-return]
    if function == "sum":
        return np.add.reduceat(np.where(mask, data[:, s], 0.0), starts).tolist()  # type: ignore[no-any-return]
    if function == "avg":
        total = np.add.reduceat(np.where(mask, data[:, s], 0.0), starts)
        count = np.add.reduceat(np.where(mask, data[:, slots[1]], 0.0), starts)
        with np.errstate(invalid="ignore", divide="ignore"):
            return _nulls(total / count, count > 0)
    if function == "min":
        lo = np.minimum.reduceat(np.where(mask, data[:, s], np.inf), starts)
        return _nulls(lo, lo < np.inf)
    if function == "max":
        hi = np.maximum.reduceat(np.where(mask, data[:, s], -np.inf), starts)
        return _nulls(hi, hi > -np.inf)
    # last: the value beside the newest event time in the window (tiles never share one)
    t = np.where(mask, data[:, s], -np.inf)
    newest = np.maximum.reduceat(t, starts)
    value = np.zeros(len(starts))
    pick = (t == newest[owner]) & (t > -np.inf)
    value[owner[pick]] = data[pick, slots[1]]
    return _nulls(value, newest > -np.inf)


def _nulls(values: np.ndarray, defined: np.ndarray) -> list[Any]:
    out: list[Any] = values.tolist()
    if not defined.all():
        for k in np.flatnonzero(~defined).tolist():
            out[k] = None
    return out
