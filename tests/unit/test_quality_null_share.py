"""A feature null in every row of its reference (a column not yet backfilled, a batch
pipeline writing nulls) and then served values was "not drifted" on every window: the
null share's bound was 1 (p = 1) and no value test runs without reference values
(review s57, finding 2)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from prometheus_client import REGISTRY

from featurestore.model import DType, Entity, Feature, FeatureView
from featurestore.quality.monitor import DriftMonitor
from featurestore.quality.profile import profile_table
from featurestore.quality.sampler import ABSENT, Window
from featurestore.quality.stats import null_share_test
from featurestore.sources.memory import MemorySource

U = Entity("user_id", DType.INT64)
VIEW = FeatureView(
    "unfilled", (U,), (Feature("e", DType.STRING), Feature("f", DType.FLOAT64), Feature("g", DType.INT64))
)


@pytest.mark.parametrize("values", [1, 10, 1000])
def test_a_window_holding_values_against_a_reference_of_no_value_fails_the_null_share_test(
    values: int,
) -> None:
    result = null_share_test(1000 - values, 1000, 1.0)
    # a reference of share 1 holds no value: a value has probability 0 under it
    assert result.pvalue == 0.0
    assert result.statistic == pytest.approx(1 - values / 1000)


def test_a_window_of_nulls_only_against_a_reference_of_no_value_is_not_drift() -> None:
    assert null_share_test(1000, 1000, 1.0).pvalue == 1.0


@pytest.mark.parametrize("reference_share", [0.0, 0.3, 0.9, 0.999])
def test_a_fall_of_the_null_share_from_below_one_is_not_tested(reference_share: float) -> None:
    """The choice docs/quality.md states: callers ask for active keys, which have fewer
    nulls than the table, so a fall is often the mix of keys alone (drift for good)."""
    assert null_share_test(0, 1000, reference_share).pvalue == 1.0


async def test_a_feature_null_throughout_its_reference_and_served_values_is_drifted() -> None:
    """The reviewer's case: every row of the reference null, values pushed, every served
    value one: each window's null_rate test rejects, and the window counts as a detection."""
    n = 5000
    table = pa.table(
        {
            "user_id": pa.array(np.arange(n), pa.int64()),
            "e": pa.array([None] * n, pa.string()),
            "f": pa.array([None] * n, pa.float64()),
            "g": pa.array([None] * n, pa.int64()),
            "event_timestamp": pa.array(np.zeros(n, np.int64), pa.timestamp("us", tz="UTC")),
        }
    )
    store = MemorySource("default")
    await store.write_profile(VIEW, 1, profile_table(VIEW, 1, table, seed=0).to_bytes())
    monitor = DriftMonitor({"default": store})
    served: dict[str, list[Any]] = {"e": ["x"] * 1000, "f": [0.5] * 999 + [None], "g": [3] + [ABSENT] * 999}
    for feature, values in served.items():
        labels = {"view": VIEW.name, "feature": feature}
        before = REGISTRY.get_sample_value("featurestore_feature_drift_detections_total", labels) or 0.0
        [result] = await monitor.check(Window(VIEW, feature, feature == "e", 1, values))
        assert (result.test, result.drifted, result.p_value) == ("null_rate", True, 0.0), result
        assert REGISTRY.get_sample_value("featurestore_feature_drift_drifted", labels) == 1.0
        after = REGISTRY.get_sample_value("featurestore_feature_drift_detections_total", labels)
        assert after == before + 1
    # a window of nulls only is the reference's own population: not drifted
    [calm] = await monitor.check(Window(VIEW, "e", True, 1, [None] * 1000))
    assert not calm.drifted and calm.p_value == 1.0
