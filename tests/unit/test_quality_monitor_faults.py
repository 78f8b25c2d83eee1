"""The drift monitor when served values turn null, the lineage graph hangs, the store
cannot be read or a feature stops being served (review s54, findings 2, 5, 7 and 8)."""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from prometheus_client import REGISTRY

from featurestore.definitions.snapshot import new_snapshot
from featurestore.model import DType, Entity, Feature, FeatureView, make_definitions
from featurestore.plan import ServingState
from featurestore.quality import monitor as monitor_module
from featurestore.quality.monitor import DriftMonitor, DriftResult
from featurestore.quality.profile import profile_table
from featurestore.quality.sampler import ABSENT, DriftSampler, Window
from featurestore.sources.memory import MemorySource

U = Entity("user_id", DType.INT64)


def _view(name: str) -> FeatureView:
    return FeatureView(name, (U,), (Feature("x", DType.FLOAT64), Feature("tier", DType.STRING)))


def _rows(n: int = 10_000) -> pa.Table:
    rng = np.random.default_rng(0)
    return pa.table(
        {
            "user_id": pa.array(np.arange(n), pa.int64()),
            "x": pa.array(rng.normal(0, 1, n)),
            "tier": pa.array(rng.choice(["free", "plus"], n)),
            "event_timestamp": pa.array(np.zeros(n, np.int64), pa.timestamp("us", tz="UTC")),
        }
    )


async def _monitor(*views: FeatureView, **kwargs: object) -> DriftMonitor:
    """A monitor over a memory store holding a version-1 profile of each of ``views``."""
    store = MemorySource("default")
    for view in views:
        await store.write_profile(view, 1, profile_table(view, 1, _rows(), seed=0).to_bytes())
    return DriftMonitor({"default": store}, **kwargs)  # type: ignore[arg-type]


def value(name: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


@pytest.mark.parametrize("feature", ["x", "tier"])
async def test_a_feature_served_mostly_null_is_drift_though_its_few_values_look_like_the_reference(
    feature: str,
) -> None:
    """Nulls were dropped and the ~5 values left tested: p ~ 0.5, "not drifted" (s54)."""
    view = _view(f"nully_{feature}")
    monitor = await _monitor(view)
    few = _rows().column(feature).to_pylist()[:5]
    results = await monitor.check(Window(view, feature, feature == "tier", 1, [*few, *[None] * 995]))
    by_test = {r.test: r for r in results}
    assert by_test["null_rate"].drifted and by_test["null_rate"].statistic == pytest.approx(0.995)
    labels = {"view": view.name, "feature": feature}
    assert value("featurestore_feature_drift_drifted", **labels) == 1
    assert value("featurestore_feature_drift_detections_total", **labels) == 1
    assert value("featurestore_feature_drift_statistic", **labels, test="null_rate") == pytest.approx(0.995)


async def test_a_window_served_wholly_null_is_tested_and_counted_as_drifted() -> None:
    """It was neither tested nor skipped: FeatureDrift's windows stopped and the alert resolved."""
    view = _view("all_null")
    monitor = await _monitor(view)
    for _ in range(3):
        [result] = await monitor.check(Window(view, "x", False, 1, [None] * 1000))
        assert (result.test, result.window_size, result.statistic, result.drifted) == (
            "null_rate",
            1000,
            1.0,
            True,
        )
    labels = {"view": "all_null", "feature": "x"}
    assert value("featurestore_feature_drift_windows_total", **labels) == 3
    assert value("featurestore_feature_drift_detections_total", **labels) == 3


async def test_a_window_with_as_many_nulls_as_the_reference_is_not_drift() -> None:
    view = _view("some_null")
    rows = _rows()
    x = rows.column("x").to_numpy().copy()
    x[::10] = np.nan  # the reference holds 10% nulls (NaN: not a value either)
    rows = rows.set_column(1, "x", pa.array(x, mask=np.isnan(x)))
    store = MemorySource("default")
    await store.write_profile(view, 1, profile_table(view, 1, rows, seed=0).to_bytes())
    monitor = DriftMonitor({"default": store})
    values = [
        None if i % 8 == 0 else v for i, v in enumerate(np.random.default_rng(1).normal(0, 1, 1000).tolist())
    ]
    results = {r.test: r for r in await monitor.check(Window(view, "x", False, 1, values))}
    assert not results["null_rate"].drifted and not results["ks"].drifted


class _HungGraph:
    """A lineage graph that took the connection and stopped answering."""

    def __init__(self) -> None:
        self.calls = 0

    async def record_drift(self, results: list[DriftResult]) -> None:
        self.calls += 1
        await asyncio.Event().wait()


async def test_a_hung_lineage_graph_write_neither_stops_drift_tests_nor_waits_forever() -> None:
    """The monitor awaited the graph's write inline: the undrifted feature y was never
    tested again once x's first detection was being written (review s54)."""
    view = FeatureView("hung_graph", (U,), (Feature("x", DType.FLOAT64), Feature("y", DType.FLOAT64)))
    rows = _rows().append_column("y", pa.array(np.random.default_rng(2).normal(0, 1, 10_000)))
    store = MemorySource("default")
    await store.write_profile(view, 1, profile_table(view, 1, rows, seed=0).to_bytes())
    graph = _HungGraph()
    monitor = DriftMonitor({"default": store}, recorder=graph)
    assert monitor.records is not None
    monitor.records.timeout = 0.2
    task = asyncio.create_task(monitor.run())
    rng = np.random.default_rng(3)
    try:
        for _ in range(5):
            monitor.submit(Window(view, "x", False, 1, rng.normal(1, 1, 1000).tolist()))  # drifted
            monitor.submit(Window(view, "y", False, 1, rng.normal(0, 1, 1000).tolist()))
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.5)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert value("featurestore_feature_drift_windows_total", view="hung_graph", feature="y") == 5
    assert value("featurestore_feature_drift_windows_total", view="hung_graph", feature="x") == 5
    dropped = value("featurestore_feature_drift_records_dropped_total", view="hung_graph", reason="timeout")
    assert graph.calls >= 2 and dropped is not None and dropped >= 2  # each write given up on, counted


class _DownStore(MemorySource):
    async def read_profile(self, view: FeatureView, data_version: int) -> bytes | None:
        raise ConnectionError("redis: connection refused")


async def test_a_reference_the_store_cannot_read_is_counted_apart_and_warned_once_a_minute(
    caplog: pytest.LogCaptureFixture,
) -> None:
    view = _view("down_store")
    monitor = DriftMonitor({"default": _DownStore("default")})
    with caplog.at_level(logging.WARNING, logger="featurestore.quality.monitor"):
        for _ in range(5):
            assert await monitor.check(Window(view, "x", False, 1, [0.0] * 1000)) == []
    assert (
        value(
            "featurestore_feature_drift_windows_skipped_total",
            view="down_store",
            reason="reference_unreadable",
        )
        == 5
    )
    assert (
        value("featurestore_feature_drift_windows_skipped_total", view="down_store", reason="no_reference")
        is None
    )
    assert len([r for r in caplog.records if "reference profile not read" in r.getMessage()]) == 1


async def test_the_drift_gauges_of_a_view_no_longer_served_are_removed_at_a_swap() -> None:
    """They kept their last value (maybe drifted = 1) until the process restarted."""
    kept, gone = _view("kept_view"), _view("gone_view")
    monitor = await _monitor(kept, gone)
    sampler = DriftSampler(monitor.submit, on_retire=monitor.retire)
    shifted = np.random.default_rng(4).normal(2, 1, 1000).tolist()
    for v in (kept, gone):
        await monitor.check(Window(v, "x", False, 1, shifted))
    assert value("featurestore_feature_drift_drifted", view="gone_view", feature="x") == 1

    state = ServingState(new_snapshot(make_definitions("p", [U], [kept], []), 2), {"kept_view": 1})
    sampler.keep_only({(v.name, v.layout) for v in state.definitions.views.values()})

    assert value("featurestore_feature_drift_drifted", view="gone_view", feature="x") is None
    assert value("featurestore_feature_drift_p_value", view="gone_view", feature="x", test="ks") is None
    assert (
        value("featurestore_feature_drift_statistic", view="gone_view", feature="x", test="null_rate") is None
    )
    assert value("featurestore_feature_drift_drifted", view="kept_view", feature="x") == 1
    # the counters stay: FeatureDrift reads their increase, which ends with them
    assert value("featurestore_feature_drift_windows_total", view="gone_view", feature="x") == 1


async def test_rows_the_view_had_no_value_for_are_neither_nulls_nor_values_of_a_window() -> None:
    """Unknown keys are served null like stored nulls; counted as nulls, a tenth of
    unknown keys would look like a feature turning null."""
    view = _view("unknown_keys")
    monitor = await _monitor(view)
    values = np.random.default_rng(2).normal(0, 1, 600).tolist()
    results = {
        r.test: r for r in await monitor.check(Window(view, "x", False, 1, [*values, *[ABSENT] * 400]))
    }
    assert not results["null_rate"].drifted and results["null_rate"].statistic == 0.0
    assert results["null_rate"].window_size == results["ks"].window_size == 600


async def test_stored_nulls_rising_ten_points_among_the_rows_read_are_drift() -> None:
    view = _view("null_rise")
    monitor = await _monitor(view)  # the reference holds no null
    values = [
        None if i % 10 == 0 else v for i, v in enumerate(np.random.default_rng(3).normal(0, 1, 800).tolist())
    ]
    results = {
        r.test: r for r in await monitor.check(Window(view, "x", False, 1, [*values, *[ABSENT] * 200]))
    }
    assert results["null_rate"].drifted and results["null_rate"].statistic == pytest.approx(0.1)
    assert not results["ks"].drifted


async def test_a_window_tested_while_a_swap_retires_its_view_does_not_bring_its_gauges_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """retire() removed the gauges, then the window under test published them again: a
    removed feature's _drifted 1 stayed until the next swap (review 2, s54, finding 5)."""
    kept, gone = _view("kept_in_flight"), _view("gone_in_flight")
    monitor = await _monitor(kept, gone)
    sampler = DriftSampler(monitor.submit, on_retire=monitor.retire)
    swapped = threading.Event()
    evaluate = monitor_module.evaluate_window

    def evaluate_across_the_swap(*args: Any) -> Any:
        assert swapped.wait(5)
        return evaluate(*args)

    monkeypatch.setattr(monitor_module, "evaluate_window", evaluate_across_the_swap)
    shifted = np.random.default_rng(4).normal(2, 1, 1000).tolist()
    in_flight = [asyncio.create_task(monitor.check(Window(v, "x", False, 1, shifted))) for v in (kept, gone)]
    await asyncio.sleep(0.05)  # both windows are in their worker threads
    sampler.keep_only({(kept.name, kept.layout)})
    swapped.set()
    kept_results, gone_results = await asyncio.gather(*in_flight)

    assert gone_results == [] and kept_results
    assert value("featurestore_feature_drift_drifted", view="gone_in_flight", feature="x") is None
    assert value("featurestore_feature_drift_p_value", view="gone_in_flight", feature="x", test="ks") is None
    assert value("featurestore_feature_drift_drifted", view="kept_in_flight", feature="x") == 1
    assert ("gone_in_flight", "x") not in monitor._published
