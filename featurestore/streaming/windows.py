"""Sliding windows at read time, from the tile records of many keys at once (numpy).

A window of ``k`` tiles read at ``now`` covers the tiles ``now_tile - k + 1 ..
now_tile`` (``now_tile = now // tile``): the tile in progress and the ``k - 1`` before
it, so a value moves as time passes even with no new events, at tile granularity.
Tiles from the reader's future (a producer's clock ahead) are left out. A value that is
not finite is undefined (None: a PRESENT null over HTTP and gRPC alike): only tiles
written before the decoder bounded column values (``decode.MAX_FLOAT``) can sum to one.

The records of every key read are stacked into one matrix; every window's mask is one
row of a (windows x tiles) matrix, and each kind of partial is reduced per key for all
windows and slots in one ``reduceat``: sums (counts, sums), "maxima" (max, the negated
min, the newest times of ``last`` and of the tile), then ``last`` values are picked
beside their newest time. A fixed number of numpy calls per request, whatever the
number of keys, aggregations or windows; then one ``tolist``. Once the compiled pass
(``kernel.py``) is loaded (``use_kernel``), it replaces those reductions and the Python
path: one pass over the records (a read of 100 keys: ~2.9x quicker in all).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

import numpy as np

from featurestore.streaming.tiles import ADDS, LAST_TS, MAX, MIN, TileLayout


class Windows(NamedTuple):
    found: list[bool]  # the key has an event in its longest window
    event_ts_us: list[int]  # its newest event in that window
    columns: list[list[Any]]  # per aggregation wanted, per key; None where undefined


@dataclass(frozen=True, slots=True)
class _Plan:
    """Per layout: which slots each reduction takes, and per aggregation where its value
    is in the combined result (window, numerator, denominator, check column, threshold).

    Combined result columns: [1.0, sums..., maxima..., lasts...]; maxima are the max
    slots, the negated min slots and the ``last`` time slots; a value is defined where
    its check column is above its threshold."""

    windows: np.ndarray  # window lengths in tiles, ascending
    adds: np.ndarray
    maxima: np.ndarray
    signs: np.ndarray  # +1 for max and time slots, -1 for min slots
    last_ts: np.ndarray  # positions of the last-time columns within maxima
    last_value: np.ndarray  # the value slot of each
    window_of: np.ndarray  # per aggregation
    numerator: np.ndarray
    denominator: np.ndarray
    check: np.ndarray
    threshold: np.ndarray
    sign: np.ndarray  # -1 for min (stored negated)
    counts: np.ndarray  # positions of the count aggregations
    # per tuple of aggregations wanted (a request shape asks for the same set)
    selections: dict[tuple[int, ...], Selection] = field(default_factory=dict)

    def select(self, wanted: Sequence[int]) -> Selection:
        key = tuple(wanted)
        got = self.selections.get(key)
        if got is None:
            idx = np.asarray(key, dtype=np.int64)
            got = Selection(
                self.window_of[idx], self.numerator[idx], self.denominator[idx], self.check[idx],
                self.threshold[idx], self.sign[idx], np.flatnonzero(np.isin(idx, self.counts)),
            )  # fmt: skip
            if len(self.selections) < 1024:
                self.selections[key] = got
        return got


class Selection(NamedTuple):
    """Per aggregation wanted: where its value is in the combined result (window,
    numerator, denominator, check column, threshold, sign), and which are counts."""

    window: np.ndarray
    numerator: np.ndarray
    denominator: np.ndarray
    check: np.ndarray
    threshold: np.ndarray
    sign: np.ndarray
    count_rows: np.ndarray


_PLANS: dict[int, tuple[TileLayout, _Plan]] = {}  # by id (hashing the layout costs more); holds it


def _plan(layout: TileLayout) -> _Plan:
    cached = _PLANS.get(id(layout))
    if cached is not None and cached[0] is layout:
        return cached[1]
    ops = layout.ops
    adds = [s for s, op in enumerate(ops) if op in ADDS]
    maxes = [s for s, op in enumerate(ops) if op == MAX and s > 1]
    mins = [s for s, op in enumerate(ops) if op == MIN]
    lasts = [s for s, op in enumerate(ops) if op == LAST_TS]
    maxima = maxes + mins + lasts
    base_max = 1 + len(adds)
    base_last = base_max + len(maxima)
    windows = sorted({a.window_tiles for a in layout.aggregations})
    rows: list[tuple[int, int, int, int, float, float]] = []
    for a in layout.aggregations:
        s = a.slots[0]
        w = windows.index(a.window_tiles)
        if a.function in ("count", "sum"):
            rows.append((w, 1 + adds.index(s), 0, 0, -np.inf, 1.0))
        elif a.function == "avg":
            n = 1 + adds.index(a.slots[1])
            rows.append((w, 1 + adds.index(s), n, n, 0.0, 1.0))
        elif a.function in ("max", "min"):
            col = base_max + maxima.index(s)
            rows.append((w, col, 0, col, -np.inf, 1.0 if a.function == "max" else -1.0))
        else:  # last
            rows.append((w, base_last + lasts.index(s), 0, base_max + maxima.index(s), -np.inf, 1.0))
    cols = list(zip(*rows, strict=True))
    got = _Plan(
        windows=np.array(windows, dtype=np.int64),
        adds=np.array(adds, dtype=np.int64),
        maxima=np.array(maxima, dtype=np.int64),
        signs=np.array([1.0] * len(maxes) + [-1.0] * len(mins) + [1.0] * len(lasts)),
        last_ts=np.arange(len(maxes) + len(mins), len(maxima), dtype=np.int64),
        last_value=np.array(lasts, dtype=np.int64) + 1,
        window_of=np.array(cols[0], dtype=np.int64),
        numerator=np.array(cols[1], dtype=np.int64),
        denominator=np.array(cols[2], dtype=np.int64),
        check=np.array(cols[3], dtype=np.int64),
        threshold=np.array(cols[4]),
        sign=np.array(cols[5]),
        counts=np.array(
            [i for i, a in enumerate(layout.aggregations) if a.function == "count"], dtype=np.int64
        ),
    )
    _PLANS[id(layout)] = (layout, got)  # layouts are cached per view definition (tiles.view_layout)
    return got


class ReduceWindows(Protocol):
    """``kernel.reduce_windows``: fills ``values``, ``defined`` and ``newest`` as
    ``_reduced`` computes them; returns how many values are undefined."""

    def __call__(
        self,
        data: np.ndarray,
        starts: np.ndarray,
        counts: np.ndarray,
        now_tile: float,
        windows: np.ndarray,
        adds: np.ndarray,
        maxima: np.ndarray,
        signs: np.ndarray,
        last_ts: np.ndarray,
        last_value: np.ndarray,
        window: np.ndarray,
        numerator: np.ndarray,
        denominator: np.ndarray,
        check: np.ndarray,
        threshold: np.ndarray,
        sign: np.ndarray,
        values: np.ndarray,
        defined: np.ndarray,
        newest: np.ndarray,
    ) -> int: ...


_kernel: ReduceWindows | None = None


def use_kernel(kernel: ReduceWindows | None) -> None:
    """Reduce with the compiled pass from now on (None: with numpy again)."""
    global _kernel
    _kernel = kernel


def kernel_loaded() -> bool:
    return _kernel is not None


# Up to this many tile records in a read, plain Python beats numpy: ~40 array operations
# cost ~75 µs whatever their size, while a 1-key read of ~20 records takes ~25 µs in
# Python (benchmarks/streaming.py, batch 1). The compiled pass beats both from the first
# records (a batch-1 read of 18 records: 12.0 µs against 27.4 in Python, 46.5 in numpy,
# ``python -m benchmarks.stream_windows``, 2026-12-04; one key of 7 records: 13.0 against
# 14.7 and 40.3, a one-off timing): with it, this path is never taken.
# tests/unit/test_stream_windows.py holds the three paths to the same answers.
SMALL_READ_RECORDS = 48


def compute(layout: TileLayout, blobs: Sequence[bytes | None], now_us: int, wanted: Sequence[int]) -> Windows:
    """Window values of aggregations ``wanted`` (indices into layout.aggregations)."""
    n = len(blobs)
    have: Sequence[int] = range(n) if all(blobs) else [i for i, b in enumerate(blobs) if b]
    if not have:
        return Windows([False] * n, [0] * n, [[None] * n for _ in wanted])
    plan = _plan(layout)
    chunks: Sequence[bytes] = blobs if len(have) == n else [blobs[i] for i in have]  # type: ignore[assignment,misc]
    kernel = _kernel
    if kernel is None and sum(map(len, chunks)) <= SMALL_READ_RECORDS * layout.record_bytes:
        newest_small, cols_small = _small(layout, plan, chunks, now_us, wanted)
        return _spread(n, have, newest_small, cols_small)
    counts = np.fromiter(map(len, chunks), dtype=np.int64, count=len(chunks)) // layout.record_bytes
    data = np.frombuffer(b"".join(chunks), dtype="<f8").reshape(-1, layout.width)
    starts = np.zeros(len(chunks), dtype=np.int64)
    np.cumsum(counts[:-1], out=starts[1:])
    sel = plan.select(wanted)
    if kernel is not None:
        values = np.empty((len(wanted), len(chunks)))
        defined = np.empty((len(wanted), len(chunks)), dtype=np.bool_)
        newest = np.empty(len(chunks))
        undefined = kernel(
            data, starts, counts, float(now_us // layout.tile_us), plan.windows, plan.adds, plan.maxima,
            plan.signs, plan.last_ts, plan.last_value, *sel[:6], values, defined, newest,
        )  # fmt: skip
    else:
        values, defined, newest = _reduced(plan, sel, data, starts, counts, now_us // layout.tile_us)
        undefined = not defined.all()
    cols: list[list[Any]] = values.tolist()
    for j in sel.count_rows.tolist():
        cols[j] = values[j].astype(np.int64).tolist()
    if undefined:
        rows, keys = np.nonzero(~defined)
        for j, k in zip(rows.tolist(), keys.tolist(), strict=True):  # ints, not numpy scalars: 4x quicker
            cols[j][k] = None
    if len(have) == n and newest.min() > -np.inf:  # every key found (the common case)
        return Windows([True] * n, newest.astype(np.int64).tolist(), cols)
    return _spread(n, have, newest.tolist(), cols)


def _spread(n: int, have: Sequence[int], newest: list[float], cols: list[list[Any]]) -> Windows:
    """Per key read (``have`` of ``n``): found where a tile is in the longest window."""
    if len(have) == n and min(newest) > -np.inf:  # the common case: no per-key remapping
        return Windows([True] * n, [int(t) for t in newest], cols)
    found = [False] * n
    ts_out = [0] * n
    full: list[list[Any]] = [[None] * n for _ in cols]
    for k, i in enumerate(have):
        if newest[k] > -np.inf:
            found[i] = True
            ts_out[i] = int(newest[k])
            for j, col in enumerate(cols):
                full[j][i] = col[k]
    return Windows(found, ts_out, full)


def _small(
    layout: TileLayout, plan: _Plan, chunks: Sequence[bytes], now_us: int, wanted: Sequence[int]
) -> tuple[list[float], list[list[Any]]]:
    """The same values as the numpy path, record by record (few records)."""
    now_tile = now_us // layout.tile_us
    windows = plan.windows.tolist()
    longest = windows[-1]
    adds, maxima, signs = plan.adds.tolist(), plan.maxima.tolist(), plan.signs.tolist()
    last_ts = set(plan.last_ts.tolist())
    fmt = struct.Struct(f"<{layout.width}d")
    newest: list[float] = []
    rows: list[list[list[float]]] = []  # per key, per window: [1, sums..., maxima..., lasts...]
    n_last = len(last_ts)
    for chunk in chunks:
        acc = [[1.0, *([0.0] * len(adds)), *([-math.inf] * len(maxima)), *([0.0] * n_last)] for _ in windows]
        top = -math.inf
        for rec in fmt.iter_unpack(chunk):
            age = now_tile - rec[0]
            if age < 0 or age >= longest:
                continue
            if rec[1] > top:
                top = rec[1]
            for wi, length in enumerate(windows):
                if age >= length:
                    continue
                row = acc[wi]
                for j, slot in enumerate(adds, 1):
                    row[j] += rec[slot]
                base = 1 + len(adds)
                for j, slot in enumerate(maxima):
                    v = rec[slot] * signs[j]
                    if v > row[base + j]:
                        row[base + j] = v
                        if j in last_ts:  # the value slot follows its time
                            row[base + len(maxima) + j - (len(maxima) - n_last)] = rec[slot + 1]
        newest.append(top)
        rows.append(acc)
    w, numerator, denominator, check, threshold, sign, count_rows = plan.select(wanted)
    counts = set(count_rows.tolist())
    cols: list[list[Any]] = []
    for j, (wi, num, den, chk, thr, sg) in enumerate(
        zip(w.tolist(), numerator.tolist(), denominator.tolist(), check.tolist(),
            threshold.tolist(), sign.tolist(), strict=True)
    ):  # fmt: skip
        col: list[Any] = []
        for acc in rows:
            row = acc[wi]
            v = row[num] / row[den] * sg if row[chk] > thr else math.nan
            if math.isfinite(v):
                col.append(int(v) if j in counts else v)
            else:
                col.append(None)
        cols.append(col)
    return newest, cols


def _reduced(
    plan: _Plan, sel: Selection, data: np.ndarray, starts: np.ndarray, counts: np.ndarray, now_tile: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Values (any number where undefined), where they are defined, and per key its newest event
    time in its longest window (-inf: none), in numpy: what ``kernel.reduce_windows`` fills."""
    age = now_tile - data[:, 0]
    masks = (age >= 0) & (age < plan.windows[:, None])  # (windows, tiles)
    newest = np.maximum.reduceat(np.where(masks[-1], data[:, 1], -np.inf), starts)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):  # over: tiles from before MAX_FLOAT
        combined = _reduce(plan, data, masks, starts, counts)  # (windows, keys, columns)
        values = combined[sel.window, :, sel.numerator] / combined[sel.window, :, sel.denominator]
    values *= sel.sign[:, None]
    defined = (combined[sel.window, :, sel.check] > sel.threshold[:, None]) & np.isfinite(values)
    return values, defined, newest


def _reduce(
    plan: _Plan, data: np.ndarray, masks: np.ndarray, starts: np.ndarray, counts: np.ndarray
) -> np.ndarray:
    """[1, sums, maxima, lasts] per window, key and column: shape (windows, keys, columns)."""
    m = masks[:, :, None]
    parts: list[np.ndarray] = [np.ones((len(plan.windows), len(starts), 1))]
    if len(plan.adds):
        parts.append(np.add.reduceat(np.where(m, data[:, plan.adds], 0.0), starts, axis=1))
    if len(plan.maxima):
        t = np.where(m, data[:, plan.maxima] * plan.signs, -np.inf)  # (windows, tiles, maxima)
        maxima = np.maximum.reduceat(t, starts, axis=1)
        parts.append(maxima)
        if len(plan.last_ts):
            owner = np.repeat(np.arange(len(starts)), counts)
            times = t[:, :, plan.last_ts]
            best = maxima[:, :, plan.last_ts]
            win, row, which = np.nonzero((times == best[:, owner, :]) & (times > -np.inf))
            lasts = np.zeros(best.shape)
            lasts[win, owner[row], which] = data[row, plan.last_value[which]]  # tiles never share a time
            parts.append(lasts)
    return np.concatenate(parts, axis=2)
