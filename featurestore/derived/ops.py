"""The operators of the expression language as numba scalar functions (kernels call them).

Values are float64; null is NaN, bools are 1.0 / 0.0 (NaN = null). Every operator
returns null for a null operand, ``where``, ``and`` and ``or`` included (the issue's
rule: a null input gives a null result unless ``coalesce`` handles it); ``coalesce`` is
the only exception. Undefined results (``x / 0``,
``log`` of a non-positive number, ``sqrt`` of a negative one, overflow to infinity) are
null too, so a kernel never yields NaN or infinity as a value.

Generated kernels import this module; its source hash is part of every kernel's cache
key (``codegen``), so editing it recompiles them.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numba
import numpy as np

nan = math.nan
_logger = logging.getLogger(__name__)


def _probe() -> None:  # pragma: no cover - never called, only decorated
    pass


def _cacheable() -> bool:
    """Whether numba finds a writable cache for this module: ``NUMBA_CACHE_DIR``, the
    ``__pycache__`` beside this file or the user's cache directory. Without one,
    ``cache=True`` fails at decoration (a RuntimeError), and every import of a kernel,
    which imports this module, with it: on a read-only install with an unwritable home
    and no ``NUMBA_CACHE_DIR`` the operators are compiled uncached instead: each kernel
    build compiles the ones it calls again, which is cheap (a process building and
    serving ``x - y``: 1.78 against 1.74 s with the operators cached, 3 runs each)."""
    try:
        numba.njit(cache=True)(_probe)
    except RuntimeError as e:
        _logger.warning("%s: set NUMBA_CACHE_DIR to a writable directory so kernel builds reuse them", e)
        return False
    return True


CACHED = _cacheable()
_jit = numba.njit(cache=CACHED, nogil=True, error_model="numpy")


@_jit
def fin(x: float) -> float:
    """Null for NaN and infinities: what enters a kernel and what leaves arithmetic."""
    return x if math.isfinite(x) else nan


@_jit
def add(a: float, b: float) -> float:
    return fin(a + b)


@_jit
def sub(a: float, b: float) -> float:
    return fin(a - b)


@_jit
def mul(a: float, b: float) -> float:
    return fin(a * b)


@_jit
def div(a: float, b: float) -> float:
    return nan if b == 0.0 else fin(a / b)


@_jit
def pow_(a: float, b: float) -> float:
    if math.isnan(a) or math.isnan(b):  # C pow(x, 0) is 1 even for NaN
        return nan
    if a == 0.0 and b < 0.0:
        return nan
    if a < 0.0 and b != math.floor(b):
        return nan
    return fin(a**b)


@_jit
def log(x: float) -> float:
    return math.log(x) if x > 0.0 else nan


@_jit
def log1p(x: float) -> float:
    return math.log1p(x) if x > -1.0 else nan


@_jit
def exp(x: float) -> float:
    return fin(math.exp(x))  # overflow (x > 709.78...) is infinity: null


@_jit
def sqrt(x: float) -> float:
    return math.sqrt(x) if x >= 0.0 else nan


@_jit
def abs_(x: float) -> float:
    return abs(x)


@_jit
def min_(a: float, b: float) -> float:
    return nan if math.isnan(a) or math.isnan(b) else (a if a <= b else b)


@_jit
def max_(a: float, b: float) -> float:
    return nan if math.isnan(a) or math.isnan(b) else (a if a >= b else b)


@_jit
def clip(x: float, lo: float, hi: float) -> float:
    """min(max(x, lo), hi): with lo > hi every value becomes hi."""
    return min_(max_(x, lo), hi)


@_jit
def coalesce(a: float, b: float) -> float:
    return b if math.isnan(a) else a


@_jit
def where(c: float, a: float, b: float) -> float:
    if math.isnan(c) or math.isnan(a) or math.isnan(b):  # strict: the unchosen branch counts too
        return nan
    return a if c != 0.0 else b


_INT64_END = 2.0**63  # int64 holds [-2^63, 2^63): both ends are exact float64 values


@_jit
def int64(x: float) -> float:
    """An int64 feature's value, still a float64: ``x`` truncated toward zero, null
    outside int64's range. Kernels apply it where the feature is computed, so features
    reading it see the value the response carries."""
    if not -_INT64_END <= x < _INT64_END:  # NaN fails the test too
        return nan
    return float(math.trunc(x))


# Up to this many edges a bucket counts them all, branch-free: a binary search's
# branches follow the data, which the processor predicts badly on request values. 100
# varied rows a call (a loop over 512 inputs, uniform over the edges' range; a script in
# /work, 2026-12-05): 4 edges 4.43 µs counting against 5.04 searching, 16 edges 4.73 /
# 5.43, 32 edges 5.36 / 5.98, 64 edges 6.49 / 6.24. In the demo's kernel (4 edges): 2.43
# -> 1.86 µs a 100-row call, 1.45 either way on one input repeated.
LINEAR_EDGES = 32


@_jit
def bucket(x: float, edges: np.ndarray[Any, np.dtype[np.float64]]) -> float:
    """How many of the ascending ``edges`` are <= x."""
    if math.isnan(x):
        return nan
    if len(edges) <= LINEAR_EDGES:
        count = 0
        for e in edges:
            count += e <= x
        return float(count)
    lo, hi = 0, len(edges)
    while lo < hi:
        mid = (lo + hi) // 2
        if edges[mid] <= x:
            lo = mid + 1
        else:
            hi = mid
    return float(lo)


@_jit
def eq(a: float, b: float) -> float:
    return nan if math.isnan(a) or math.isnan(b) else (1.0 if a == b else 0.0)


@_jit
def ne(a: float, b: float) -> float:
    return nan if math.isnan(a) or math.isnan(b) else (1.0 if a != b else 0.0)


@_jit
def lt(a: float, b: float) -> float:
    return nan if math.isnan(a) or math.isnan(b) else (1.0 if a < b else 0.0)


@_jit
def le(a: float, b: float) -> float:
    return nan if math.isnan(a) or math.isnan(b) else (1.0 if a <= b else 0.0)


@_jit
def gt(a: float, b: float) -> float:
    return nan if math.isnan(a) or math.isnan(b) else (1.0 if a > b else 0.0)


@_jit
def ge(a: float, b: float) -> float:
    return nan if math.isnan(a) or math.isnan(b) else (1.0 if a >= b else 0.0)


@_jit
def not_(a: float) -> float:
    return nan if math.isnan(a) else (1.0 if a == 0.0 else 0.0)


@_jit
def and_(a: float, b: float) -> float:
    if math.isnan(a) or math.isnan(b):  # strict, not SQL's three-valued logic
        return nan
    return 1.0 if a != 0.0 and b != 0.0 else 0.0


@_jit
def or_(a: float, b: float) -> float:
    if math.isnan(a) or math.isnan(b):
        return nan
    return 1.0 if a != 0.0 or b != 0.0 else 0.0
