"""Drift monitor: tests every full window of served values against the reference
profile of the data version it was served from, off the hot path.

The sampler (``sampler.py``) hands full windows to ``submit`` (a deque append and an
event set: nothing else on the request). The ``drift-monitor`` task reads the
reference profile from the view's store (once per view layout and data version:
cached), runs the test in a worker thread (numpy releases the GIL for the sorts), and
publishes the gauges, counters and, for a detection, a drift record (``DriftRecorder``:
the lineage graph). A backlog beyond ``MAX_QUEUED`` windows drops the oldest, counted:
the monitor never holds more than that much memory however fast windows fill.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from featurestore.config import DriftConfig
from featurestore.model import FeatureView
from featurestore.quality import metrics
from featurestore.quality.profile import Profile, category_name
from featurestore.quality.sampler import DriftSampler, Window
from featurestore.quality.stats import TestResult, chi_square, ks_2samp
from featurestore.sources.base import OnlineSource, ProfileStore

log = logging.getLogger(__name__)
MAX_QUEUED = 64


@dataclass(frozen=True, slots=True)
class DriftResult:
    view: str
    feature: str
    test: str  # ks | chi_square
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
    """Where detections go beside the metrics (the lineage graph); must not raise."""

    async def record_drift(self, results: list[DriftResult]) -> None: ...


def evaluate_window(window: Window, profile: Profile, alpha: float) -> DriftResult | None:
    """The drift test of one window against its reference (None: nothing to test).
    Nulls are dropped here (off the hot path); the window size is what was tested."""
    ref = profile.features.get(window.feature)
    if ref is None:
        return None
    result: TestResult
    if window.categorical:
        cats = [category_name(v) for v in window.values if v is not None]
        if not cats or not ref.categories:
            return None
        result, test, size = chi_square(collections.Counter(cats), ref.categories), "chi_square", len(cats)
    else:
        values = np.array(window.values, dtype=np.float64)  # None -> NaN
        values = values[~np.isnan(values)]
        if not len(values) or ref.sample is None or not len(ref.sample):
            return None
        result, test, size = ks_2samp(values, ref.sample), "ks", len(values)
    return DriftResult(
        window.view.name,
        window.feature,
        test,
        result.statistic,
        result.pvalue,
        result.pvalue < alpha,
        size,
        window.data_version,
        time.time_ns() // 1000,
    )


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
        self.recorder = recorder
        self._queue: collections.deque[Window] = collections.deque()
        self._ready = asyncio.Event()
        self._profiles: dict[tuple[str, str, int], Profile | None] = {}
        self._generation = 0  # forget_references() calls: a read that spans one is not cached
        self.results: collections.deque[DriftResult] = collections.deque(maxlen=256)  # the latest, for tests

    def submit(self, window: Window) -> None:
        if len(self._queue) >= MAX_QUEUED:
            dropped = self._queue.popleft()
            metrics.DRIFT_SKIPPED.labels(dropped.view.name, "queue_full").inc()
        self._queue.append(window)
        self._ready.set()

    async def run(self) -> None:
        """The ``drift-monitor`` background task."""
        while True:
            await self._ready.wait()
            self._ready.clear()
            while self._queue:
                window = self._queue.popleft()
                try:
                    await self.check(window)
                except Exception:
                    log.exception("drift test of %s:%s failed", window.view.name, window.feature)

    async def check(self, window: Window) -> DriftResult | None:
        profile = await self.reference(window.view, window.data_version)
        if profile is None:
            metrics.DRIFT_SKIPPED.labels(window.view.name, "no_reference").inc()
            return None
        if window.feature not in profile.features:
            # its profiling failed: logged and counted where the profile was built, often a
            # `featurestore materialize` job nobody scrapes; said here too (review s53)
            metrics.DRIFT_SKIPPED.labels(window.view.name, "not_profiled").inc()
            return None
        result = await asyncio.to_thread(evaluate_window, window, profile, self.alpha)
        if result is None:
            return None
        self.publish(result)
        if result.drifted and self.recorder is not None:
            await self.recorder.record_drift([result])
        return result

    def publish(self, r: DriftResult) -> None:
        self.results.append(r)
        metrics.DRIFT_STATISTIC.labels(r.view, r.feature, r.test).set(r.statistic)
        metrics.DRIFT_P_VALUE.labels(r.view, r.feature, r.test).set(r.p_value)
        metrics.DRIFT_DRIFTED.labels(r.view, r.feature).set(1 if r.drifted else 0)
        metrics.DRIFT_WINDOWS.labels(r.view, r.feature).inc()
        # the detections series exists (at 0) from the first window: FeatureDrift divides
        # increase(detections) by increase(windows), and a series born at 1 loses that 1
        detections = metrics.DRIFT_DETECTIONS.labels(r.view, r.feature)
        if r.drifted:
            detections.inc()
            log.info(
                "drift: %s %s=%.4f p=%.3g (window %d, reference data version %d)",
                r.feature_id, r.test, r.statistic, r.p_value, r.window_size, r.data_version,
            )  # fmt: skip

    def forget_references(self) -> None:
        """Drop the cached profiles (the runtime calls it on every registry swap): a store
        can re-profile a data version in place (the memory store reloads a changed file
        at the same version and layout), and the cache must not keep the old reference."""
        self._profiles.clear()
        self._generation += 1

    async def reference(self, view: FeatureView, data_version: int) -> Profile | None:
        """The profile stored with a view's data version (cached; None when it has none)."""
        key = (view.name, view.layout, data_version)
        if key in self._profiles:
            return self._profiles[key]
        store: object = self.stores.get(view.online_store)
        profile, generation = None, self._generation
        if isinstance(store, ProfileStore):
            try:
                raw = await store.read_profile(view, data_version)
            except Exception as e:
                log.warning("%s v%d: reference profile not read: %s", view.name, data_version, e)
                return None  # not cached: try again on the next window
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
        every=config.sample_every,
        per_request=config.values_per_request,
        window=config.window,
        min_interval=config.min_interval_seconds,
    )
    return sampler, monitor
