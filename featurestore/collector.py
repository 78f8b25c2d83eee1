"""Python's cyclic garbage collector in a serving process: its thresholds, and its pauses
as a metric (``featurestore_gc_pause_seconds{generation}``).

A request makes no cyclic garbage: at batch 1 (cache off, 1 worker, ~7,600 requests a
second) CPython's default thresholds (700, 10, 10) ran 389 young, 35 middle and 3.2 full
collections a second and not one freed an object (a ``gc.callbacks`` probe, 2026-12-05):
they only walked the live objects of the requests in flight. With ``THRESHOLDS`` the same
load ran none in 5 s, and ``benchmarks.ab`` read -3.5% CPU per request at batch 1 (128 ->
123 µs), -1.9% at 100, p99 unchanged (benchmarks/RESULTS.md, "Requirement 3
experiments"). A young collection walks the young objects alive at that moment: at most
about the threshold's worth (rows the cache just filled, say), 20,000 of them in 0.9 ms
on this VM; a middle one walks up to ten times that, a full one every object since the
freeze. The pause histogram shows what a deployment's collections cost.
"""

from __future__ import annotations

import gc
import time
from typing import Any, Final

from featurestore import metrics

THRESHOLDS: Final = (20_000, 10, 10)  # young, middle, old (CPython's default: 700, 10, 10)


class PauseMeter:
    """A ``gc.callbacks`` entry timing each collection into the pause histogram's buffers
    (``metrics.flush()`` folds them in). Never into prometheus_client itself: a collection
    can start inside it, under the lock it takes with several workers (a new labelled
    series allocates under it), and the callback would wait on that lock for ever.
    Collections never overlap (CPython runs one at a time), whatever thread they run in."""

    __slots__ = ("_buffers", "_started")

    def __init__(self) -> None:
        self._started = 0.0
        # every generation's series from the start: a quiet collector reads 0, not absent
        self._buffers = [metrics.gc_pause(str(g)) for g in range(3)]

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        elif phase == "stop" and self._started:
            self._buffers[info["generation"]].observe(time.perf_counter() - self._started)
            self._started = 0.0


def watch() -> PauseMeter:
    """Start timing collections (before start-up's full collection, which it then
    shows); ``unwatch`` ends it."""
    meter = PauseMeter()
    gc.callbacks.append(meter)
    return meter


def unwatch(meter: PauseMeter) -> None:
    if meter in gc.callbacks:
        gc.callbacks.remove(meter)


def serve() -> None:
    """Everything allocated so far (modules, registry, loaded data) lives as long as the
    process: collected once, then kept out of the collector's sight (else each full
    collection walks the whole heap and stalls the loop for tens of milliseconds), and
    from here collected by ``THRESHOLDS``."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*THRESHOLDS)
