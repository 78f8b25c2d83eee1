"""Drift sampling and testing on seeded streams (no timing): the sampler's windows, the
monitor's verdicts against the reference of the data version served."""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from prometheus_client import REGISTRY

from featurestore.definitions.snapshot import new_snapshot
from featurestore.join import JoinEngine, JoinRequest, Limits
from featurestore.model import DType, Entity, Feature, FeatureView, Status, make_definitions
from featurestore.outcomes import ViewOutcome
from featurestore.plan import JoinPlan, ServingState
from featurestore.quality.monitor import DriftMonitor, evaluate_window
from featurestore.quality.profile import profile_table
from featurestore.quality.sampler import ABSENT, DriftSampler, Window
from featurestore.quality.stats import OTHER
from featurestore.sources.memory import MemorySource

U = Entity("user_id", DType.INT64)
V = FeatureView(
    "v",
    (U,),
    (Feature("x", DType.FLOAT64), Feature("tier", DType.STRING), Feature("vec", DType.FLOAT32_VECTOR)),
)


def state(version: int) -> ServingState:
    snap = new_snapshot(make_definitions("p", [U], [V], []), 1)
    return ServingState(snap, {"v": version})


def plan_for(st: ServingState) -> JoinPlan:
    return st.plan(("v:x", "v:tier", "v:vec"), None, False)


def reference(seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    n = 20_000
    return pa.table(
        {
            "user_id": pa.array(np.arange(n), pa.int64()),
            "x": pa.array(rng.normal(0, 1, n)),
            "tier": pa.array(rng.choice(["free", "plus", "pro"], n, p=[0.6, 0.3, 0.1])),
            "vec": pa.array([[0.0]] * n, pa.list_(pa.float32())),
            "event_timestamp": pa.array(np.zeros(n, np.int64), pa.timestamp("us", tz="UTC")),
        }
    )


def feed(sampler: DriftSampler, st: ServingState, xs: np.ndarray, tiers: list[str], batch: int = 100) -> None:
    plan = plan_for(st)
    for i in range(0, len(xs), batch):
        cols: list[Any] = [xs[i : i + batch].tolist(), tiers[i : i + batch], [[0.0]] * batch]
        sampler.observe(st, plan, [cols])


def test_the_sampler_fills_windows_per_feature_and_skips_vectors() -> None:
    windows: list[Window] = []
    sampler = DriftSampler(windows.append, every=1, per_request=100, window=250)
    st = state(1)
    xs = np.arange(1000, dtype=np.float64)
    tiers = ["a", None] * 500
    plan = plan_for(st)
    for i in range(0, 1000, 100):
        sampler.observe(st, plan, [[xs[i : i + 100].tolist(), tiers[i : i + 100], [[0.0]] * 100]])
    numeric = [w for w in windows if w.feature == "x"]
    categorical = [w for w in windows if w.feature == "tier"]
    assert [w.values for w in numeric] == [list(range(k, k + 250)) for k in (0, 250, 500, 750)]
    # nulls fill windows too (dropping them would be per-row work on the join path)
    assert len(categorical) == 4 and all(set(w.values) == {"a", None} for w in categorical)
    assert not [w for w in windows if w.feature == "vec"]
    assert all(w.data_version == 1 for w in windows)


def test_the_sampler_takes_one_request_in_every_on_average_and_at_most_per_request_values() -> None:
    windows: list[Window] = []
    sampler = DriftSampler(windows.append, every=4, per_request=3, window=3, seed=1)
    st = state(1)
    plan = plan_for(st)
    for i in range(4000):
        sampler.observe(st, plan, [[[float(i)] * 10, ["t"] * 10, [[0.0]] * 10]])
    xs = [w.values for w in windows if w.feature == "x"]
    assert all(len(v) == 3 and len(set(v)) == 1 for v in xs)  # 3 values, all of one request
    assert 900 <= len(xs) <= 1100  # 1,000 expected (gaps uniform on 1..7); seeded


def test_the_sampler_sees_both_services_of_traffic_that_alternates_them() -> None:
    other = FeatureView("w", (U,), (Feature("y", DType.FLOAT64),))
    snap = new_snapshot(make_definitions("p", [U], [V, other], []), 1)
    st = ServingState(snap, {"v": 1, "w": 1})
    plan_v, plan_w = st.plan(("v:x",), None, False), st.plan(("w:y",), None, False)
    windows: list[Window] = []
    sampler = DriftSampler(windows.append, every=10, per_request=1, window=10, seed=2)
    for _ in range(1000):  # A, B, A, B, ...: a fixed gap of 10 always lands on B
        sampler.observe(st, plan_v, [[[1.0]]])
        sampler.observe(st, plan_w, [[[2.0]]])
    sampled = {w.feature: len(w.values) for w in windows}
    assert sampled.keys() == {"x", "y"}


def test_a_partial_window_is_dropped_when_the_served_data_version_changes() -> None:
    windows: list[Window] = []
    sampler = DriftSampler(windows.append, every=1, per_request=10, window=15)
    plan = plan_for(state(1))
    sampler.observe(state(1), plan, [[[1.0] * 10, ["a"] * 10, [[0.0]] * 10]])
    sampler.observe(state(2), plan, [[[2.0] * 10, ["a"] * 10, [[0.0]] * 10]])
    sampler.observe(state(2), plan, [[[2.0] * 10, ["a"] * 10, [[0.0]] * 10]])
    [w] = [w for w in windows if w.feature == "x"]
    assert w.data_version == 2 and set(w.values) == {2.0}


def test_a_feature_s_window_rests_after_a_test_and_is_not_sampled_meanwhile() -> None:
    """At high QPS windows fill in under a second: each feature is tested at most once per
    ``min_interval`` (the tests, in a thread beside the serving loop, cost 12-15% of the
    CPU at 2,000 batch-100 joins/s), and what is served meanwhile is not sampled."""
    windows: list[Window] = []
    now = [100.0]
    sampler = DriftSampler(
        windows.append, every=1, per_request=10, window=20, min_interval=10.0, clock=lambda: now[0]
    )
    st = state(1)
    plan = plan_for(st)

    def join(x: float) -> None:
        sampler.observe(st, plan, [[[x] * 10, ["a"] * 10, [[0.0]] * 10]])

    join(1.0)
    join(1.0)  # x's window is full: tested, then rests until 110
    for _ in range(50):
        join(2.0)  # not sampled
    now[0] = 110.0
    join(3.0)
    join(3.0)
    xs = [w for w in windows if w.feature == "x"]
    assert [set(w.values) for w in xs] == [{1.0}, {3.0}]


async def monitored(shift: float, tier_p: list[float], seed: int) -> list[Any]:
    store = MemorySource("default")
    await store.write_profile(V, 1, profile_table(V, 1, reference(), seed=0).to_bytes())
    monitor = DriftMonitor({"default": store})
    windows: list[Window] = []
    sampler = DriftSampler(windows.append, every=1, per_request=100, window=1000)
    rng = np.random.default_rng(seed)
    n = 20_000
    feed(sampler, state(1), rng.normal(shift, 1, n), list(rng.choice(["free", "plus", "pro"], n, p=tier_p)))
    # the values' tests (each window also has its null share's: none are null here)
    return [r for w in windows for r in await monitor.check(w) if r.test != "null_rate"]


async def test_an_unshifted_stream_raises_few_alarms_and_a_shifted_one_is_detected_in_every_window() -> None:
    calm = await monitored(0.0, [0.6, 0.3, 0.1], seed=11)
    shifted = await monitored(0.25, [0.5, 0.3, 0.2], seed=12)
    calm_x = [r for r in calm if r.feature == "x"]
    assert len(calm_x) == 20 and sum(r.drifted for r in calm_x) <= 3  # alpha 0.05: P(>3 of 20) = 1.6%; seeded
    assert sum(r.drifted for r in calm if r.feature == "tier") <= 3
    assert all(r.drifted for r in shifted)  # 0.25 sd (KS) and 10 points of mass moved (chi-square)
    assert {r.test for r in shifted} == {"ks", "chi_square"} and {r.data_version for r in shifted} == {1}


async def test_a_window_of_a_version_without_a_profile_is_not_tested() -> None:
    monitor = DriftMonitor({"default": MemorySource("default")})
    window = Window(V, "x", False, 5, [0.0] * 10)
    assert await monitor.check(window) == []


async def test_a_window_of_a_feature_its_profile_left_out_is_counted_as_not_profiled() -> None:
    # (its profiling failed in a `featurestore materialize` job nobody scrapes)
    profile = profile_table(V, 1, reference())
    without_x = dataclasses.replace(profile, features={k: f for k, f in profile.features.items() if k != "x"})
    store = MemorySource("default")
    await store.write_profile(V, 1, without_x.to_bytes())
    monitor = DriftMonitor({"default": store})
    labels = {"view": V.name, "reason": "not_profiled"}
    before = REGISTRY.get_sample_value("featurestore_feature_drift_windows_skipped_total", labels) or 0.0
    assert await monitor.check(Window(V, "x", False, 1, [0.0] * 1000)) == []
    assert await monitor.check(Window(V, "tier", True, 1, ["free"] * 1000)) != []
    after = REGISTRY.get_sample_value("featurestore_feature_drift_windows_skipped_total", labels)
    assert after == before + 1


async def test_the_reference_follows_the_data_version_of_the_window() -> None:
    store = MemorySource("default")
    shifted = reference()
    shifted = shifted.set_column(1, "x", pa.array(np.random.default_rng(5).normal(3, 1, shifted.num_rows)))
    await store.write_profile(V, 1, profile_table(V, 1, reference()).to_bytes())
    await store.write_profile(V, 2, profile_table(V, 2, shifted).to_bytes())
    monitor = DriftMonitor({"default": store})
    values = np.random.default_rng(6).normal(3, 1, 1000).tolist()
    [old, _] = await monitor.check(Window(V, "x", False, 1, values))
    [new, _] = await monitor.check(Window(V, "x", False, 2, values))
    assert old.drifted and old.data_version == 1
    assert new.p_value > 0.001 and new.data_version == 2


def test_windows_of_view_layouts_no_longer_served_are_dropped() -> None:
    windows: list[Window] = []
    sampler = DriftSampler(windows.append, every=1, per_request=10, window=15)
    st = state(1)
    sampler.observe(st, plan_for(st), [[[1.0] * 10, ["a"] * 10, [[0.0]] * 10]])
    sampler.keep_only({("v", "another layout")})
    sampler.observe(st, plan_for(st), [[[2.0] * 10, ["a"] * 10, [[0.0]] * 10]])
    assert windows == []  # the first 10 values went with the dropped window
    sampler.keep_only({("v", V.layout)})
    sampler.observe(st, plan_for(st), [[[3.0] * 10, ["a"] * 10, [[0.0]] * 10]])
    [w] = [w for w in windows if w.feature == "x"]
    assert w.values == [2.0] * 10 + [3.0] * 5


async def test_the_monitor_drops_nulls_from_the_values_test_and_tests_their_share_apart() -> None:
    store = MemorySource("default")
    await store.write_profile(V, 1, profile_table(V, 1, reference(), seed=0).to_bytes())
    monitor = DriftMonitor({"default": store})
    rng = np.random.default_rng(8)
    numeric, nulls = await monitor.check(
        Window(V, "x", False, 1, [*rng.normal(0, 1, 600).tolist(), *[None] * 400])
    )
    tiers = rng.choice(["free", "plus", "pro"], 700, p=[0.6, 0.3, 0.1]).tolist()
    categorical, _ = await monitor.check(Window(V, "tier", True, 1, [*tiers, *[None] * 300]))
    assert numeric.window_size == 600 and numeric.test == "ks" and not numeric.drifted
    assert categorical.window_size == 700 and categorical.test == "chi_square"
    assert (nulls.test, nulls.window_size, nulls.statistic, nulls.drifted) == ("null_rate", 1000, 0.4, True)


@pytest.mark.parametrize("every", [0, -1])
def test_a_sampler_refuses_a_rate_below_one(every: int) -> None:
    with pytest.raises(ValueError):
        DriftSampler(lambda w: None, every=every)


async def test_the_memory_store_profiles_the_latest_row_per_key_of_the_file_it_loads(tmp_path: Any) -> None:
    import pyarrow.parquet as pq

    from featurestore.model import BatchSource
    from featurestore.quality.profile import Profile

    path = tmp_path / "rows.parquet"

    def write(scores: list[float], ts: list[int]) -> None:
        pq.write_table(
            pa.table(
                {
                    "user_id": pa.array([1, 1, 2], pa.int64()),
                    "x": pa.array(scores),
                    "tier": pa.array(["old", "new", "new"]),
                    "vec": pa.array([[0.0]] * 3, pa.list_(pa.float32())),
                    "event_timestamp": pa.array(ts, pa.timestamp("us", tz="UTC")),
                }
            ),
            path,
        )

    view = FeatureView(V.name, V.entities, V.features, batch_source=BatchSource(path=str(path)))
    store = MemorySource("default")
    write([1.0, 2.0, 3.0], [1, 2, 1])  # key 1: the row at t=2 is its latest
    await store.prepare([view])
    first = Profile.from_bytes(await store.read_profile(view, 4) or b"")  # any served version
    sample = first.features["x"].sample
    assert sample is not None and sorted(sample.tolist()) == [2.0, 3.0]
    assert first.features["tier"].categories == {"new": 2}
    write([5.0, 6.0, 7.0], [1, 2, 1])  # the file changes: the next prepare reloads it
    await store.prepare([view])
    second = Profile.from_bytes(await store.read_profile(view, 4) or b"")
    assert second.features["x"].sample is not None and sorted(second.features["x"].sample.tolist()) == [
        6.0,
        7.0,
    ]


async def test_the_monitor_tests_against_a_reloaded_files_profile_after_a_swap(tmp_path: Any) -> None:
    import pyarrow.parquet as pq

    from featurestore.model import BatchSource

    path = tmp_path / "rows.parquet"

    def write(shift: float) -> None:
        table = reference(seed=1)
        x = table.column("x").to_numpy() + shift
        pq.write_table(table.set_column(table.schema.get_field_index("x"), "x", pa.array(x)), path)

    view = FeatureView(V.name, V.entities, V.features, batch_source=BatchSource(path=str(path)))
    store = MemorySource("default")
    monitor = DriftMonitor({"default": store})
    write(0.0)
    await store.prepare([view])
    rng = np.random.default_rng(3)
    assert await monitor.reference(view, 0) is not None
    write(1.0)  # a new file at the same data version and layout, then a registry swap
    await store.prepare([view])
    monitor.forget_references()  # what Runtime.apply_registry_change does after the swap
    served = Window(view, "x", False, 0, rng.normal(1.0, 1, 1000).tolist())  # the new file's values
    [result, _] = await monitor.check(served)
    assert result.statistic < 0.1  # the new file: ~0.03; the old one (1 sd off): ~0.38


async def test_bool_features_are_tested_as_categories_named_like_the_profile() -> None:
    flags = FeatureView("flags", (U,), (Feature("active", DType.BOOL),))
    n = 10_000
    table = pa.table(
        {
            "user_id": pa.array(np.arange(n), pa.int64()),
            "active": pa.array(np.arange(n) % 4 == 0),  # 25% true
            "event_timestamp": pa.array(np.zeros(n, np.int64), pa.timestamp("us", tz="UTC")),
        }
    )
    store = MemorySource("default")
    profile = profile_table(flags, 1, table)
    assert profile.features["active"].categories == {"true": 2500, "false": 7500}
    await store.write_profile(flags, 1, profile.to_bytes())
    monitor = DriftMonitor({"default": store})
    [same, _] = await monitor.check(Window(flags, "active", True, 1, [True] * 250 + [False] * 750))
    [flipped, _] = await monitor.check(Window(flags, "active", True, 1, [True] * 750 + [False] * 250))
    assert not same.drifted and same.statistic == 0.0
    assert flipped.drifted


async def test_a_string_feature_with_more_categories_than_the_profile_keeps_does_not_drift_on_its_own_values() -> (
    None
):
    wide = FeatureView("w", (U,), (Feature("city", DType.STRING),))
    rng = np.random.default_rng(5)
    n = 30_000
    cities = [f"c{i}" for i in rng.zipf(1.3, n) % 20_000]  # ~thousands of categories: a long tail
    table = pa.table(
        {
            "user_id": pa.array(np.arange(n), pa.int64()),
            "city": pa.array(cities),
            "event_timestamp": pa.array(np.zeros(n, np.int64), pa.timestamp("us", tz="UTC")),
        }
    )
    profile = profile_table(wide, 1, table, seed=0)
    assert OTHER in (profile.features["city"].categories or {})
    drifted = 0
    for _ in range(20):  # windows of values drawn from the very rows profiled
        served = [cities[i] for i in rng.choice(n, 1000, replace=False)]
        [result, _] = evaluate_window(Window(wide, "city", True, 1, served), profile, 0.05)
        drifted += result.drifted
    assert drifted <= 3  # alpha 0.05: P(>3 of 20) = 1.6%; seeded


def test_the_sampler_spreads_its_values_over_the_batch_not_only_its_first_rows() -> None:
    windows: list[Window] = []
    sampler = DriftSampler(windows.append, every=1, per_request=10, window=1000, seed=0)
    st = state(1)
    plan = plan_for(st)
    batch = np.arange(
        100, dtype=np.float64
    )  # a caller that sends its keys sorted: values rise along the batch
    for _ in range(100):
        sampler.observe(st, plan, [[batch.tolist(), ["t"] * 100, [[0.0]] * 100]])
    [w] = [w for w in windows if w.feature == "x"]
    assert len(set(w.values)) == 100  # every row position gets its turn (seeded)
    assert abs(float(np.mean(w.values)) - 49.5) < 1.0  # the head of the batch alone: 4.5


async def test_the_detections_counter_exists_at_zero_from_a_features_first_tested_window() -> None:
    from prometheus_client import REGISTRY

    calm = FeatureView("calm_view", (U,), (Feature("x", DType.FLOAT64),))
    store = MemorySource("default")
    await store.write_profile(
        calm,
        1,
        profile_table(calm, 1, reference().select(["user_id", "x", "event_timestamp"]), seed=0).to_bytes(),
    )
    monitor = DriftMonitor({"default": store})
    values = np.random.default_rng(2).choice(reference().column("x").to_numpy(), 1000).tolist()
    results = await monitor.check(Window(calm, "x", False, 1, values))
    assert results != []
    labels = {"view": "calm_view", "feature": "x"}
    assert REGISTRY.get_sample_value("featurestore_feature_drift_windows_total", labels) == 1.0
    # FeatureDrift's ratio needs the series before the first detection (increase() of a
    # series that appears at 1 is 0)
    assert REGISTRY.get_sample_value("featurestore_feature_drift_detections_total", labels) == float(
        any(r.drifted for r in results)
    )


async def test_a_reference_profile_is_decoded_off_the_event_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    from featurestore.quality.profile import Profile

    store = MemorySource("default")
    await store.write_profile(V, 1, profile_table(V, 1, reference(), seed=0).to_bytes())
    decoded_on: list[int] = []
    real = Profile.from_bytes

    def spy(raw: bytes) -> Profile:
        decoded_on.append(threading.get_ident())
        return real(raw)

    monkeypatch.setattr(Profile, "from_bytes", staticmethod(spy))
    assert await DriftMonitor({"default": store}).reference(V, 1) is not None
    assert decoded_on and threading.get_ident() not in decoded_on  # the loop's thread never decodes


async def test_two_detections_of_a_feature_in_the_same_millisecond_are_two_drift_records() -> None:
    from featurestore.quality.monitor import DriftResult
    from featurestore.quality.records import GraphRecorder
    from lineage.graph.memory import InMemoryGraph

    graph = InMemoryGraph()
    recorder = GraphRecorder(graph, server="w1")
    at_us = 1_700_000_000_000_123
    await recorder.record_drift([DriftResult("v", "x", "ks", 0.2, 1e-6, True, 1000, 3, at_us)])
    await recorder.record_drift([DriftResult("v", "x", "ks", 0.3, 1e-7, True, 1000, 3, at_us + 10)])
    records = await graph.drift("v:x", None, None, 10)
    assert [r.statistic for r in records] == [0.2, 0.3]


async def test_a_profile_read_that_spans_a_swap_is_not_cached() -> None:
    class Reloading(MemorySource):  # the swap lands while the monitor's read is in flight
        monitor: DriftMonitor

        async def read_profile(self, view: FeatureView, data_version: int) -> bytes | None:
            raw = await super().read_profile(view, data_version)
            self.monitor.forget_references()
            await self.write_profile(
                view, data_version, profile_table(V, 1, reference(seed=9), seed=9).to_bytes()
            )
            return raw

    store = Reloading("default")
    await store.write_profile(V, 1, profile_table(V, 1, reference(), seed=0).to_bytes())
    store.monitor = monitor = DriftMonitor({"default": store})
    old = await monitor.reference(V, 1)
    new = await monitor.reference(V, 1)  # read again: the first read was not cached
    assert old is not None and new is not None
    a, b = old.features["x"].sample, new.features["x"].sample
    assert a is not None and b is not None and not np.array_equal(a, b)


@pytest.mark.parametrize("n", [11, 15, 19, 199])
def test_every_row_position_of_a_batch_is_sampled_equally_often(n: int) -> None:
    """Positions (start + k * n // 10) % n from a uniform start: each row is taken with
    probability 10 / n. A start kept in [0, n - span] without wrapping took the middle
    rows of a batch of 15 six times as often as its first (docs/quality.md: no position
    bias)."""
    windows: list[Window] = []
    sampler = DriftSampler(windows.append, every=1, per_request=10, window=1000, seed=3)
    st = state(1)
    plan = plan_for(st)
    batch: list[list[Any]] = [[float(i) for i in range(n)], ["t"] * n, [[0.0]] * n]
    joins = 200 * n  # 2,000 picks of every row expected
    for _ in range(joins):
        sampler.observe(st, plan, [batch])
    taken = np.bincount(
        np.array([v for w in windows if w.feature == "x" for v in w.values], dtype=np.int64), minlength=n
    )
    expected = taken.sum() / n
    assert taken.min() > 0.9 * expected and taken.max() < 1.1 * expected, taken.tolist()


def test_a_stream_views_aggregations_are_not_sampled_having_no_reference_to_be_tested_against() -> None:
    from tests.unit.test_stream_views import DOC, parse

    st = ServingState(new_snapshot(parse(DOC), 1))
    plan = st.plan(("clicks:n_5m", "clicks:spend_1h"), None, False)
    windows: list[Window] = []
    sampler = DriftSampler(windows.append, every=1, per_request=100, window=100)
    for _ in range(3):
        sampler.observe(st, plan, [[list(range(100)), [float(v) for v in range(100)]]])
    assert windows == []  # (a stored view's would be full after the first join: the test above)


def test_rows_a_view_had_no_value_for_are_absent_from_its_windows_and_stored_nulls_stay_null() -> None:
    windows: list[Window] = []
    sampler = DriftSampler(windows.append, every=1, per_request=4, window=4)
    st = state(1)
    found, missing = Status.PRESENT, Status.NOT_FOUND
    outcome = ViewOutcome("v", [found, missing, found, Status.UNAVAILABLE], [None] * 4, all_present=False)
    sampler.observe(
        st, plan_for(st), [[[1.0, None, None, None], ["a", None, "b", None], [[0.0]] * 4]], [outcome]
    )
    by_feature = {w.feature: w.values for w in windows}
    assert by_feature == {"x": [1.0, ABSENT, None, ABSENT], "tier": ["a", ABSENT, "b", ABSENT]}


async def test_the_join_engine_tells_the_sampler_which_rows_its_views_had_no_value_for() -> None:
    windows: list[Window] = []
    store = MemorySource("default")
    await store.prepare([V])
    st = state(0)
    await store.write(
        V,
        pa.table(
            {
                "user_id": [1],
                "x": [0.5],
                "tier": pa.array([None], pa.string()),
                "vec": [[0.0]],
                "event_timestamp": pa.array([1], pa.timestamp("us", tz="UTC")),
            }
        ),
        0,
    )
    engine = JoinEngine(
        {"default": store}, st, Limits(), sampler=DriftSampler(windows.append, every=1, window=2)
    )
    await engine.join(JoinRequest({"user_id": [1, 2]}, ("v:x", "v:tier")), time.monotonic() + 5)
    assert {w.feature: w.values for w in windows} == {"x": [0.5, ABSENT], "tier": [None, ABSENT]}
