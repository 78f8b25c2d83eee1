"""Drift monitor: tests every full window of served values against the reference
profile of the data version it was served from, off the hot path.

The sampler (``sampler.py``) hands full windows to ``submit`` (a deque append and an
event set: nothing else on the request). The ``drift-monitor`` task reads the
reference profile from the view's store (once per view layout and data version:
cached), runs the tests in a worker thread (numpy releases the GIL for the sorts):
the values' test (KS or chi-square, nulls dropped) and the null share's
(``null_rate``: a feature turning null is drift too, and so is one null throughout
its reference being served values), and publishes the gauges,
counters and, for a detection, a drift record (``DriftRecorder``: the lineage graph),
handed to a writer task of its own so a slow graph never holds the tests up
(``RecordWriter``). A backlog beyond ``MAX_QUEUED`` windows drops the oldest, counted:
the monitor never holds more than that much memory however fast windows fill.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from featurestore.config import DriftConfig
from featurestore.model import FeatureView
from featurestore.quality import metrics
from featurestore.quality.profile import Profile, category_name
from featurestore.quality.record_writer import RecordWriter
from featurestore.quality.sampler import ABSENT, DriftSampler, Window
from featurestore.quality.stats import TestResult, chi_square, ks_2samp, null_share_test
from featurestore.sources.base import OnlineSource, ProfileStore

log = logging.getLogger(__name__)
MAX_QUEUED = 64
WARN_EVERY_SECONDS = 60.0  # a view's unreadable reference: one warning a minute, not one a window


@dataclass(frozen=True, slots=True)
class DriftResult:
    view: str
    feature: str
    test: str  # ks | chi_square | null_rate
    statistic: float
    p_value: float
    drifted: bool
    window_size: int
    data_version: int  # the reference: the data version whose profile was tested against
    at_us: int  # when the window was tested, epoch µs

    @property
    def feature_id(self) -> str:
        return f"{self.view}:{self.feature}"


class DriftRecorder(Protocol):
    """Where detections go beside the metrics (the lineage graph). Raises when the
    records were not written: the ``RecordWriter`` counts them (``reason="error"``)."""

    async def record_drift(self, results: list[DriftResult]) -> None: ...


class ReferenceUnreadable(Exception):
    """The view's store could not be read for a reference profile (not: it has none)."""


def evaluate_window(window: Window, profile: Profile, alpha: float) -> list[DriftResult]:
    """The drift tests of one window against its reference: the values' (nulls dropped
    here, off the hot path: its window size is what was tested; none when no value is
    left) and the null share's against the reference's (``null_rate``, the whole
    window). Empty: nothing to test."""
    ref = profile.features.get(window.feature)
    if ref is None:
        return []
    tested: list[tuple[TestResult, str, int]] = []
    read = [v for v in window.values if v is not ABSENT]  # rows the view had a value for
    if window.categorical:
        cats = [category_name(v) for v in read if v is not None]
        present = len(cats)
        if cats and ref.categories:
            tested.append((chi_square(collections.Counter(cats), ref.categories), "chi_square", present))
    else:
        values = np.array(read, dtype=np.float64)  # None -> NaN
        values = values[~np.isnan(values)]  # (NaN: not profiled either)
        present = len(values)
        if present and ref.sample is not None and len(ref.sample):
            tested.append((ks_2samp(values, ref.sample), "ks", present))
    n = len(read)  # a row the view had no value for is neither a null nor a value here
    if n and profile.rows:
        # the reference's null share: its rows less its non-null values (profile.py)
        reference_share = 1.0 - ref.count / profile.rows
        tested.append((null_share_test(n - present, n, reference_share), "null_rate", n))
    at_us = time.time_ns() // 1000
    return [
        DriftResult(
            window.view.name,
            window.feature,
            test,
            result.statistic,
            result.pvalue,
            result.pvalue < alpha,
            size,
            window.data_version,
            at_us,
        )
        for result, test, size in tested
    ]


class DriftMonitor:
    def __init__(
        self,
        stores: Mapping[str, OnlineSource],
        *,
        alpha: float = 0.05,
        recorder: DriftRecorder | None = None,
    ) -> None:
        self.stores = stores
        self.alpha = alpha
        self._queue: collections.deque[Window] = collections.deque()
        self._ready = asyncio.Event()
        self._profiles: dict[tuple[str, str, int], Profile | None] = {}
        self._generation = 0  # forget_references() calls: a read that spans one is not cached
        self.results: collections.deque[DriftResult] = collections.deque(maxlen=256)  # the latest, for tests
        self.records = RecordWriter(recorder) if recorder is not None else None
        # per (view, feature) published: the view layout and tests of its gauges (retire())
        self._published: dict[tuple[str, str], tuple[str, set[str]]] = {}
        self._warned: dict[str, float] = {}  # view -> when its unreadable reference was last logged
        self._served: set[tuple[str, str]] | None = None  # (view, layout) at the last retire()

    def watch(self, view: str, feature: str) -> None:
        """A feature the sampler keeps a window for: its windows and detections counters,
        and its view's skipped windows by reason, exist at 0 from now on. ``increase()``
        takes a series' first sample as its baseline: FeatureDrift divides
        increase(detections) by increase(windows), and FeatureDriftWindowsSkipped reads
        increase(skipped), so a series born at 1 lost its first window (review s57)."""
        metrics.DRIFT_WINDOWS.labels(view, feature)
        metrics.DRIFT_DETECTIONS.labels(view, feature)
        for reason in metrics.SKIP_REASONS:
            metrics.DRIFT_SKIPPED.labels(view, reason)

    def submit(self, window: Window) -> None:
        if len(self._queue) >= MAX_QUEUED:
            dropped = self._queue.popleft()
            metrics.DRIFT_SKIPPED.labels(dropped.view.name, "queue_full").inc()
        self._queue.append(window)
        self._ready.set()

    async def run(self) -> None:
        """The ``drift-monitor`` background task (and the drift records' writer)."""
        writer = asyncio.create_task(self.records.run(), name="drift-records") if self.records else None
        try:
            while True:
                await self._ready.wait()
                self._ready.clear()
                while self._queue:
                    window = self._queue.popleft()
                    try:
                        await self.check(window)
                    except Exception:
                        log.exception("drift test of %s:%s failed", window.view.name, window.feature)
        finally:
            if writer is not None:
                writer.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await writer

    async def check(self, window: Window) -> list[DriftResult]:
        """Test one window: its results (empty: not tested, counted as skipped)."""
        name = window.view.name
        if all(v is ABSENT for v in window.values):
            # Every row served without a value (NOT_FOUND, OUTSIDE_MAX_AGE, UNAVAILABLE): a
            # reason of its own, alerted (FeatureDriftWindowsSkipped), not not_testable: a
            # view whose materialization stopped (every key past its TTL) or whose callers'
            # keys are all unknown went silent here, and a firing FeatureDrift resolved
            # (review 3, s54). ~10 µs per 1,000-row window, off the hot path.
            metrics.DRIFT_SKIPPED.labels(name, "all_absent").inc()
            return []
        try:
            profile = await self.reference(window.view, window.data_version)
        except ReferenceUnreadable as e:
            # not no_reference ("the version has no profile": re-materialize), review s54
            metrics.DRIFT_SKIPPED.labels(name, "reference_unreadable").inc()
            now = time.monotonic()
            if now - self._warned.get(name, -WARN_EVERY_SECONDS) >= WARN_EVERY_SECONDS:
                self._warned[name] = now
                log.warning(
                    "%s v%d: %s (windows skipped; logged once a minute)", name, window.data_version, e
                )
            return []
        if profile is None:
            metrics.DRIFT_SKIPPED.labels(name, "no_reference").inc()
            return []
        if window.feature not in profile.features:
            # its profiling failed: logged and counted where the profile was built, often a
            # `featurestore materialize` job nobody scrapes; said here too (review s53)
            metrics.DRIFT_SKIPPED.labels(name, "not_profiled").inc()
            return []
        results = await asyncio.to_thread(evaluate_window, window, profile, self.alpha)
        if not results:  # a profile of no rows, and no value to test
            metrics.DRIFT_SKIPPED.labels(name, "not_testable").inc()
            return []
        if self._served is not None and (name, window.view.layout) not in self._served:
            # retired while it was tested (or its reference read): published, its gauges
            # (a _drifted 1 of a feature no longer served) came back until the next swap,
            # maybe days away (review 2, s54). Dropped, as retire() drops queued windows.
            return []
        self.publish(window.view.layout, results)
        drifted = [r for r in results if r.drifted]
        if drifted and self.records is not None:
            self.records.put(drifted)  # never awaited here: a hung graph stalled every test (s54)
        return results

    def publish(self, layout: str, results: list[DriftResult]) -> None:
        """One window's results: each test's gauges; the window counts once, drifted when
        any of its tests rejected the reference."""
        r = results[0]
        known = self._published.get((r.view, r.feature))
        tests = known[1] if known is not None and known[0] == layout else set()
        self._published[(r.view, r.feature)] = (layout, tests)
        drifted = False
        for r in results:
            self.results.append(r)
            tests.add(r.test)
            metrics.DRIFT_STATISTIC.labels(r.view, r.feature, r.test).set(r.statistic)
            metrics.DRIFT_P_VALUE.labels(r.view, r.feature, r.test).set(r.p_value)
            drifted |= r.drifted
            if r.drifted:
                log.info(
                    "drift: %s %s=%.4f p=%.3g (window %d, reference data version %d)",
                    r.feature_id, r.test, r.statistic, r.p_value, r.window_size, r.data_version,
                )  # fmt: skip
        metrics.DRIFT_DRIFTED.labels(r.view, r.feature).set(1 if drifted else 0)
        metrics.DRIFT_WINDOWS.labels(r.view, r.feature).inc()
        # the detections series exists (at 0) from the first window: FeatureDrift divides
        # increase(detections) by increase(windows), and a series born at 1 loses that 1;
        # both exist at 0 before it when the sampler watched the feature (watch())
        detections = metrics.DRIFT_DETECTIONS.labels(r.view, r.feature)
        if drifted:
            detections.inc()

    def retire(self, served: set[tuple[str, str]]) -> None:
        """Drop the gauges of features whose view layout is no longer served (the sampler's
        ``keep_only`` calls it at a registry swap): a removed feature showed its last
        ``_drifted`` (maybe 1) until the process restarted (review s54). The counters
        stay (FeatureDrift reads their increase, which ends with them). Windows of those
        layouts still queued, or being tested now, are dropped."""
        # With several workers the samples live in the workers' files, which
        # prometheus_client cannot remove from (it warns, and the file keeps the value):
        # left to the worker's exit there (docs/quality.md).
        removable = not ({"PROMETHEUS_MULTIPROC_DIR", "prometheus_multiproc_dir"} & os.environ.keys())
        self._served = set(served)  # check() drops a window of another layout tested meanwhile
        for (view, feature), (layout, tests) in list(self._published.items()):
            if (view, layout) in served:
                continue
            del self._published[(view, feature)]
            if not removable:
                continue
            for test in tests:  # (remove() of a label set never set is a no-op)
                metrics.DRIFT_STATISTIC.remove(view, feature, test)
                metrics.DRIFT_P_VALUE.remove(view, feature, test)
            metrics.DRIFT_DRIFTED.remove(view, feature)
        kept = [w for w in self._queue if (w.view.name, w.view.layout) in served]
        self._queue.clear()
        self._queue.extend(kept)

    def forget_references(self) -> None:
        """Drop the cached profiles (the runtime calls it on every registry swap): a store
        can re-profile a data version in place (the memory store reloads a changed file
        at the same version and layout), and the cache must not keep the old reference."""
        self._profiles.clear()
        self._generation += 1

    async def reference(self, view: FeatureView, data_version: int) -> Profile | None:
        """The profile stored with a view's data version (cached; None when it has none);
        ``ReferenceUnreadable`` when the store could not be read (not cached)."""
        key = (view.name, view.layout, data_version)
        if key in self._profiles:
            return self._profiles[key]
        store: object = self.stores.get(view.online_store)
        profile, generation = None, self._generation
        if isinstance(store, ProfileStore):
            try:
                raw = await store.read_profile(view, data_version)
            except Exception as e:  # not cached: read again for the next window
                raise ReferenceUnreadable(f"reference profile not read: {e}") from e
            # ~7 ms for 16 numeric features (zlib, JSON, base64): off the serving loop
            profile = await asyncio.to_thread(Profile.from_bytes, raw) if raw is not None else None
        if profile is None:
            log.info("%s v%d has no reference profile: its windows are not tested", view.name, data_version)
        if generation != self._generation:
            return profile  # read before a swap that may have replaced it: not cached
        if len(self._profiles) > 256:
            self._profiles.clear()
        self._profiles[key] = profile
        return profile


def build_drift(
    config: DriftConfig, stores: Mapping[str, OnlineSource], recorder: DriftRecorder | None = None
) -> tuple[DriftSampler, DriftMonitor] | None:
    """The sampler the engine feeds and the monitor it hands windows to (None: disabled)."""
    if not config.enabled:
        return None
    monitor = DriftMonitor(stores, alpha=config.alpha, recorder=recorder)
    sampler = DriftSampler(
        monitor.submit,
        on_retire=monitor.retire,
        on_watch=monitor.watch,
        every=config.sample_every,
        per_request=config.values_per_request,
        window=config.window,
        min_interval=config.min_interval_seconds,
    )
    return sampler, monitor
