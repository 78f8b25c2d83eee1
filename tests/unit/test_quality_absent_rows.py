"""Rows a view served without a value (the store down or late: UNAVAILABLE; past the
view's TTL: OUTSIDE_MAX_AGE) are not the feature's nulls: a store outage or TTL expiry
read as every feature of the view turning null, and FeatureDrift paged for all of them
(review 2, s54, finding 1)."""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pytest
from prometheus_client import REGISTRY

from featurestore.definitions.snapshot import new_snapshot
from featurestore.join import JoinEngine, JoinRequest, Limits
from featurestore.model import DType, Entity, Feature, FeatureView, make_definitions
from featurestore.plan import ServingState
from featurestore.quality.monitor import DriftMonitor
from featurestore.quality.profile import profile_table
from featurestore.quality.sampler import ABSENT, DriftSampler, Window
from featurestore.sources.base import ViewQuery, ViewRead
from featurestore.sources.memory import MemorySource

U = Entity("user_id", DType.INT64)


def _view(name: str, ttl_seconds: int | None = None) -> FeatureView:
    features = (Feature("x", DType.FLOAT64), Feature("tier", DType.STRING))
    return FeatureView(name, (U,), features, ttl_seconds=ttl_seconds)


def _rows(n: int, event_us: Sequence[int] | None = None) -> pa.Table:
    rng = np.random.default_rng(0)
    return pa.table(
        {
            "user_id": pa.array(np.arange(n), pa.int64()),
            "x": pa.array(rng.normal(0, 1, n)),
            "tier": pa.array(rng.choice(["free", "plus"], n)),
            "event_timestamp": pa.array(event_us or np.zeros(n, np.int64), pa.timestamp("us", tz="UTC")),
        }
    )


class _DownStore(MemorySource):
    async def read(self, queries: Sequence[ViewQuery]) -> list[ViewRead | BaseException]:
        raise ConnectionError("redis down")


async def _windows(view: FeatureView, store: MemorySource, keys: list[int]) -> dict[str, list[object]]:
    windows: list[Window] = []
    st = ServingState(new_snapshot(make_definitions("p", [U], [view], []), 1), {view.name: 0})
    sampler = DriftSampler(windows.append, every=1, per_request=len(keys), window=len(keys))
    engine = JoinEngine({"default": store}, st, Limits(), sampler=sampler)
    await engine.join(
        JoinRequest({"user_id": keys}, (f"{view.name}:x", f"{view.name}:tier")), time.monotonic() + 5
    )
    return {w.feature: w.values for w in windows}


async def test_rows_past_the_views_ttl_are_absent_from_its_windows_not_nulls() -> None:
    view = _view("ttl_view", ttl_seconds=60)
    store = MemorySource("default")
    await store.prepare([view])
    now_us = time.time_ns() // 1000
    await store.write(view, _rows(2, [now_us, now_us - 3_600_000_000]), 0)  # key 1: an hour old
    windows = await _windows(view, store, [0, 1])
    assert windows["x"][1] is ABSENT and windows["tier"][1] is ABSENT
    assert windows["x"][0] is not ABSENT and windows["x"][0] is not None


async def test_rows_of_a_store_that_failed_the_read_are_absent_from_its_windows_not_nulls() -> None:
    view = _view("down_view")
    store = _DownStore("default")
    await store.prepare([view])
    assert await _windows(view, store, [0, 1, 2]) == {"x": [ABSENT] * 3, "tier": [ABSENT] * 3}


async def test_windows_filled_during_a_store_outage_are_not_drift_of_every_feature(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The reviewer's scenario: the reference cached before the outage, then windows whose
    rows are 30% or 100% UNAVAILABLE (null_rate p = 1e-14 and p = 0 before)."""
    view = _view("outage_view")
    store = MemorySource("default")
    await store.write_profile(view, 1, profile_table(view, 1, _rows(10_000), seed=0).to_bytes())
    monitor = DriftMonitor({"default": store})
    rng = np.random.default_rng(0)
    assert await monitor.check(Window(view, "x", False, 1, rng.normal(0, 1, 1000).tolist()))  # cached

    async def down(*_: object) -> bytes | None:
        raise ConnectionError("redis down")

    monkeypatch.setattr(store, "read_profile", down)
    for share in (0.3, 1.0):
        values = [ABSENT if rng.random() < share else float(v) for v in rng.normal(0, 1, 1000)]
        tiers = [v if v is ABSENT else str(rng.choice(["free", "plus"])) for v in values]
        for feature, window in (("x", values), ("tier", tiers)):
            results = await monitor.check(Window(view, feature, feature == "tier", 1, window))
            assert not any(r.drifted for r in results), (share, feature, results)
    labels = {"view": "outage_view", "feature": "x"}
    assert REGISTRY.get_sample_value("featurestore_feature_drift_detections_total", labels) == 0
    # a window of nothing but absent rows has nothing to test: skipped, not "null"
    skipped = {"view": "outage_view", "reason": "all_absent"}
    assert REGISTRY.get_sample_value("featurestore_feature_drift_windows_skipped_total", skipped) == 2


async def test_windows_of_a_view_whose_materialization_stopped_are_counted_as_all_absent() -> None:
    """Every key past the view's TTL: counted as not_testable, which no alert reads, and the
    view went silent in drift (review 3, s54, finding 1)."""
    view = _view("stopped_view", ttl_seconds=3600)
    store = MemorySource("default")
    await store.prepare([view])
    two_hours_ago = time.time_ns() // 1000 - 7_200_000_000  # materialized then, nothing since
    await store.write(view, _rows(100, [two_hours_ago] * 100), 0)
    await store.write_profile(view, 0, profile_table(view, 0, _rows(100), seed=0).to_bytes())
    monitor = DriftMonitor({"default": store})
    windows = await _windows(view, store, list(range(100)))
    for feature, values in windows.items():
        assert await monitor.check(Window(view, feature, feature == "tier", 0, values)) == []

    def skipped(reason: str) -> float | None:
        labels = {"view": "stopped_view", "reason": reason}
        return REGISTRY.get_sample_value("featurestore_feature_drift_windows_skipped_total", labels)

    assert skipped("all_absent") == 2 and skipped("not_testable") is None
