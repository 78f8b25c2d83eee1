"""Buffered children of prometheus_client metrics, for the hot path (featurestore/metrics.py
says why): a join adds to plain Python numbers and lists, ``flush()`` folds them into
prometheus_client."""

from __future__ import annotations

import os
from bisect import bisect_left
from collections import Counter as _Count
from collections.abc import Callable
from typing import Any

import numpy as np

_BUFFERS: list[Any] = []
# From this many buffered observations on, a histogram is binned by numpy: 15,000
# latencies (a second of batch-1 joins on one worker) flushed in 2.4-3.6 ms per bisect,
# a stall of the event loop every request in flight waits out.
_VECTOR_FLUSH = 64


class BufferedCounter:
    __slots__ = ("_child", "n")

    def __init__(self, child: Any) -> None:
        self._child = child
        self.n = 0.0
        _BUFFERS.append(self)

    def inc(self, amount: float = 1) -> None:
        self.n += amount

    def flush(self) -> None:
        if self.n:
            n, self.n = self.n, 0.0
            self._child.inc(n)


class BufferedHistogram:
    __slots__ = ("_child", "_values")

    def __init__(self, child: Any) -> None:
        self._child = child
        self._values: list[float] = []
        _BUFFERS.append(self)

    def observe(self, amount: float) -> None:
        self._values.append(amount)

    def flush(self) -> None:
        if not self._values:
            return
        values, self._values = self._values, []
        child = self._child
        # what Histogram.observe does per value, once per bucket for the whole batch
        # (bucket i: the first upper bound >= the value; a NaN in none); the sum equal up
        # to float rounding (one addition of the batch's total)
        if len(values) < _VECTOR_FLUSH:
            counted = _Count(bisect_left(child._upper_bounds, v) for v in values if v == v)
            for i, count in counted.items():
                child._buckets[i].inc(count)
        else:
            arr = np.array(values, dtype=np.float64)
            at = np.searchsorted(child._upper_bounds, arr[~np.isnan(arr)], side="left")
            counts = np.bincount(at, minlength=len(child._buckets))
            for i in np.flatnonzero(counts).tolist():
                child._buckets[i].inc(int(counts[i]))
        child._sum.inc(sum(values))


class BufferedGauge:
    """An up/down count (in-flight requests), or a level set on the hot path (the row
    cache's entries), written through at every flush."""

    __slots__ = ("_child", "value")

    def __init__(self, child: Any) -> None:
        self._child = child
        self.value = 0
        _BUFFERS.append(self)

    def inc(self) -> None:
        self.value += 1

    def dec(self) -> None:
        self.value -= 1

    def set(self, value: int) -> None:
        self.value = value

    def flush(self) -> None:
        self._child.set(self.value)


class Children:
    """Memoised, buffered ``metric.labels(*values)`` for label sets on the hot path."""

    __slots__ = ("_buffer", "_cache", "_metric")

    def __init__(
        self, metric: Any, buffer: type[BufferedCounter | BufferedHistogram | BufferedGauge]
    ) -> None:
        self._metric = metric
        self._buffer = buffer
        self._cache: dict[tuple[str, ...], Any] = {}

    def __call__(self, *labels: str) -> Any:
        child = self._cache.get(labels)
        if child is None:
            child = self._cache[labels] = self._buffer(self._metric.labels(*labels))
        return child

    def drop(self, gone: Callable[[tuple[str, ...]], bool]) -> None:
        """Stop serving the label sets for which ``gone(labels)``: their buffers are
        flushed and dropped, and with one process their series too (their last updates
        are then never scraped: a counter whose version is no longer served). With
        several workers prometheus_client's files keep every series they ever held, so
        there only this process's memory and flush work stay bounded."""
        for labels in [labels for labels in self._cache if gone(labels)]:
            child = self._cache.pop(labels)
            child.flush()
            _BUFFERS.remove(child)
            if not _multiprocess():  # (prometheus_client warns there: files keep every series)
                self._metric.remove(*labels)


def _multiprocess() -> bool:
    return "PROMETHEUS_MULTIPROC_DIR" in os.environ or "prometheus_multiproc_dir" in os.environ


class ByLabel(dict[str, Any]):
    """One label's children of a ``Children`` as a plain dict, each looked up on first use:
    ``counters[view].inc(n)`` costs a dict lookup, not a call (``Children`` packs its labels
    into a tuple per call), for a hot path that names one label only."""

    def __init__(self, children: Children) -> None:
        super().__init__()
        self._children = children

    def __missing__(self, value: str) -> Any:
        child = self[value] = self._children(value)
        return child


def flush() -> None:
    """Fold every buffered update into prometheus_client (call on the event loop)."""
    for b in _BUFFERS:
        b.flush()
