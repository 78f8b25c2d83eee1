"""The windows of many keys in one compiled pass over their tile records (numba).

``reduce_windows`` computes what ``windows._reduced`` does with ~25 numpy operations
over (windows x records x slots) temporaries: per aggregation wanted and key, its value
and whether it is defined, and per key the newest event time in its longest window.
Each record is added once, to the *band* of the smallest window holding it (windows
nest: a window is its band and the bands of the shorter ones), and the bands are then
folded, shortest first. The stream benchmark's batch-100 read (100 keys, ~1,870 records
of 8 slots, 15 aggregations over 3 windows): ``windows.compute`` takes ~250-285 µs in
numpy, ~85-105 µs with this pass, ~25 of them in the pass itself, the rest making the
response's values (``python -m benchmarks.stream_windows``, benchmarks/RESULTS.md).

Its signature is explicit, so importing this module compiles it, or loads it from numba's
on-disk cache (``cache=True``: the ``__pycache__`` beside this file, ``NUMBA_CACHE_DIR``
or the user's cache directory; where none is writable, it compiles uncached, as
``derived/ops.py`` does). Serving never imports it on a request: ``kernel_load`` does,
in a thread, once per process.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

import numba
import numpy as np

from featurestore.derived.loadguard import CompileDuringLoad

_logger = logging.getLogger(__name__)

_I = numba.int64[::1]
_F = numba.float64[::1]
# data is read-only: numpy's view of the bytes Redis returned, never copied
_DATA = numba.types.Array(numba.float64, 2, "C", readonly=True)
SIGNATURE = numba.int64(
    _DATA, _I, _I, numba.float64, _I, _I, _I, _F, _I, _I,  # records and the layout's plan
    _I, _I, _I, _I, _F, _F,  # the selection: window, numerator, denominator, check, threshold, sign
    numba.float64[:, ::1], numba.boolean[:, ::1], _F,  # out: values, defined, newest
)  # fmt: skip


def _compiled(fn: Callable[..., Any]) -> Any:
    try:
        return numba.njit(SIGNATURE, cache=True, nogil=True)(fn)
    except CompileDuringLoad:  # a load refusing compiles (kernel_load): nothing in the cache
        raise
    except RuntimeError as e:  # no writable cache: compile for this process only
        _logger.warning(
            "%s: set NUMBA_CACHE_DIR to a writable directory so workers reuse the windows pass", e
        )
        return numba.njit(SIGNATURE, cache=False, nogil=True)(fn)


def _reduce_windows(
    data: Any,  # (records, slots): each key's records, one after another, in tile order
    starts: Any,  # per key: its first record
    counts: Any,  # per key: how many
    now_tile: float,
    windows: Any,  # window lengths in tiles, ascending
    adds: Any,  # slots summed
    maxima: Any,  # slots maximized, each times its sign (min slots are negated)
    signs: Any,
    last_ts: Any,  # positions within maxima of the ``last`` time slots
    last_value: Any,  # per ``last`` time slot: its value slot
    window: Any,  # per aggregation wanted: its window,
    numerator: Any,  # its value's column in [1, sums..., maxima..., lasts...],
    denominator: Any,  # the column it is divided by (0: the 1),
    check: Any,  # the column that must be above
    threshold: Any,  # this for the value to be defined,
    sign: Any,  # and -1 for min (stored negated)
    values: Any,  # out: (wanted, keys), NaN where undefined
    defined: Any,  # out: (wanted, keys); not where the value is not finite (windows.py)
    newest: Any,  # out: per key (-inf: no event in its longest window)
) -> int:
    n_windows, n_adds, n_max, n_last = windows.shape[0], adds.shape[0], maxima.shape[0], last_ts.shape[0]
    longest = windows[n_windows - 1]
    base_max = 1 + n_adds
    base_last = base_max + n_max
    band = np.empty((n_windows, base_last + n_last))
    undefined = 0
    for k in range(starts.shape[0]):
        band[:, 0] = 1.0
        band[:, 1:base_max] = 0.0
        band[:, base_max:base_last] = -math.inf
        band[:, base_last:] = 0.0
        top = -math.inf
        for r in range(starts[k], starts[k] + counts[k]):
            age = now_tile - data[r, 0]
            if age < 0 or age >= longest:  # the reader's future, or past every window
                continue
            if data[r, 1] > top:
                top = data[r, 1]
            w = 0
            while age >= windows[w]:
                w += 1
            for j in range(n_adds):
                band[w, 1 + j] += data[r, adds[j]]
            for j in range(n_max):
                v = data[r, maxima[j]] * signs[j]
                if v > band[w, base_max + j]:
                    band[w, base_max + j] = v
            for j in range(n_last):  # tiles never share a time: the newest is one record's
                t = data[r, maxima[last_ts[j]]]
                if t > -math.inf and t == band[w, base_max + last_ts[j]]:
                    band[w, base_last + j] = data[r, last_value[j]]
        for w in range(1, n_windows):  # window w: band w and the windows before
            for j in range(n_adds):
                band[w, 1 + j] += band[w - 1, 1 + j]
            for j in range(n_last):  # before the times are merged below
                if band[w - 1, base_max + last_ts[j]] > band[w, base_max + last_ts[j]]:
                    band[w, base_last + j] = band[w - 1, base_last + j]
            for j in range(n_max):
                if band[w - 1, base_max + j] > band[w, base_max + j]:
                    band[w, base_max + j] = band[w - 1, base_max + j]
        newest[k] = top
        for i in range(window.shape[0]):
            row = band[window[i]]
            v = math.nan
            if row[check[i]] > threshold[i]:
                v = row[numerator[i]] / row[denominator[i]] * sign[i]
            if math.isfinite(v):  # (not finite: a sum of tiles from before decode.MAX_FLOAT)
                values[i, k] = v
                defined[i, k] = True
            else:
                values[i, k] = math.nan
                defined[i, k] = False
                undefined += 1
    return undefined


reduce_windows = _compiled(_reduce_windows)
