"""The drift counters FeatureDrift and FeatureDriftWindowsSkipped read with increase()
exist at 0 before their first increment: increase() takes a series' first sample as its
baseline, so a windows counter born at 1 left the first window out of FeatureDrift's
share (2 drifted of 4 windows read 2 of 3: over the alert's half), and a skipped counter
born at 1 its first dropped window (review s57, finding 4)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
from prometheus_client import REGISTRY

from featurestore.config import DriftConfig
from featurestore.definitions.snapshot import new_snapshot
from featurestore.model import DType, Entity, Feature, FeatureView, make_definitions
from featurestore.plan import ServingState
from featurestore.quality.metrics import SKIP_REASONS
from featurestore.quality.monitor import build_drift
from featurestore.quality.profile import profile_table
from featurestore.quality.sampler import Window
from featurestore.sources.memory import MemorySource

U = Entity("user_id", DType.INT64)
FEATURES = (Feature("x", DType.FLOAT64), Feature("tier", DType.STRING), Feature("vec", DType.FLOAT32_VECTOR))


def _view(name: str) -> FeatureView:
    return FeatureView(name, (U,), FEATURES)


def _value(name: str, labels: dict[str, str]) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


def _windows(view: str, feature: str) -> float | None:
    return _value("featurestore_feature_drift_windows_total", {"view": view, "feature": feature})


def _detections(view: str, feature: str) -> float | None:
    return _value("featurestore_feature_drift_detections_total", {"view": view, "feature": feature})


def _skipped(view: str, reason: str) -> float | None:
    return _value("featurestore_feature_drift_windows_skipped_total", {"view": view, "reason": reason})


async def test_the_drift_counters_of_a_watched_view_exist_at_zero_before_any_window() -> None:
    view = _view("watched_view")
    n = 5000
    rng = np.random.default_rng(0)
    table = pa.table(
        {
            "user_id": pa.array(np.arange(n), pa.int64()),
            "x": pa.array(rng.normal(0, 1, n)),
            "tier": pa.array(rng.choice(["a", "b"], n)),
            "vec": pa.array([[0.0]] * n, pa.list_(pa.float32())),
            "event_timestamp": pa.array(np.zeros(n, np.int64), pa.timestamp("us", tz="UTC")),
        }
    )
    store = MemorySource("default")
    await store.write_profile(view, 1, profile_table(view, 1, table, seed=0).to_bytes())
    built = build_drift(DriftConfig(sample_every=1, values_per_request=100, window=100), {"default": store})
    assert built is not None
    sampler, monitor = built
    assert _windows(view.name, "x") is None  # nothing served yet
    sampler.watch([view])  # what the runtime does at start and at each registry swap
    for feature in ("x", "tier"):
        assert (_windows(view.name, feature), _detections(view.name, feature)) == (0.0, 0.0)
    assert {reason: _skipped(view.name, reason) for reason in SKIP_REASONS} == dict.fromkeys(
        SKIP_REASONS, 0.0
    )
    assert _windows(view.name, "vec") is None  # vectors are not tested

    windows: list[Window] = []
    sampler.on_full = windows.append
    st = ServingState(new_snapshot(make_definitions("p", [U], [view], []), 1), {view.name: 1})
    plan = st.plan((f"{view.name}:x", f"{view.name}:tier"), None, False)
    sampler.observe(st, plan, [[rng.normal(0, 1, 100).tolist(), rng.choice(["a", "b"], 100).tolist()]])
    for window in windows:
        assert await monitor.check(window) != []
    assert _windows(view.name, "x") == 1.0 and _windows(view.name, "tier") == 1.0


def test_the_drift_counters_of_a_view_not_watched_exist_at_zero_from_its_first_sampled_join() -> None:
    view = _view("unwatched_view")
    built = build_drift(DriftConfig(sample_every=1, window=1000), {"default": MemorySource("default")})
    assert built is not None
    sampler, _ = built
    st = ServingState(new_snapshot(make_definitions("p", [U], [view], []), 1), {view.name: 1})
    sampler.observe(st, st.plan((f"{view.name}:x",), None, False), [[[0.5] * 10]])  # no window full
    assert (_windows(view.name, "x"), _detections(view.name, "x")) == (0.0, 0.0)
    assert _skipped(view.name, "queue_full") == 0.0 and _skipped(view.name, "reference_unreadable") == 0.0
