"""Reference profiles never stop the write they ride on: values float64 cannot hold
exactly are profiled rounded, and a feature that cannot be profiled is left out."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from prometheus_client import REGISTRY

from featurestore.model import BatchSource, DType, Entity, Feature, FeatureView
from featurestore.quality.profile import MAX_CATEGORIES, MAX_COUNTED, OTHER, Profile, ProfileBuilder
from featurestore.sources.base import ViewQuery
from featurestore.sources.memory import MemorySource

U = Entity("account_id", DType.INT64)
BIG = 2**53 + 1  # a snowflake-style id: int64, not exactly a float64
FAR = dt.datetime(9999, 12, 31, tzinfo=dt.UTC)  # "never expires"


def accounts(path: Path) -> FeatureView:
    pq.write_table(
        pa.table(
            {
                "account_id": pa.array([1, 2], pa.int64()),
                "last_txn_id": pa.array([17, BIG], pa.int64()),
                "expires_at": pa.array(
                    [dt.datetime(2024, 5, 1, tzinfo=dt.UTC), FAR], pa.timestamp("us", tz="UTC")
                ),
                "event_timestamp": pa.array(
                    [dt.datetime(2024, 1, 1, tzinfo=dt.UTC)] * 2, pa.timestamp("us", tz="UTC")
                ),
            }
        ),
        path,
    )
    return FeatureView(
        "accounts",
        (U,),
        (Feature("last_txn_id", DType.INT64), Feature("expires_at", DType.TIMESTAMP)),
        batch_source=BatchSource(path=str(path)),
    )


async def test_the_memory_store_loads_a_view_with_ids_beyond_2_53_and_year_9999_timestamps(
    tmp_path: Path,
) -> None:
    view = accounts(tmp_path / "accounts.parquet")
    store = MemorySource()
    await store.start()
    await store.prepare([view])
    [read] = await store.read([ViewQuery(view, [2], [0, 1], 0)])
    assert not isinstance(read, BaseException) and read.found == [True]
    assert read.columns[0] == [BIG]  # served exactly: only the profile rounds
    raw = await store.read_profile(view, 0)
    assert raw is not None
    profile = Profile.from_bytes(raw)
    ids, expiry = profile.features["last_txn_id"].sample, profile.features["expires_at"].sample
    assert ids is not None and sorted(ids.tolist()) == [17.0, float(BIG)]
    assert expiry is not None and expiry.max() == float(int(FAR.timestamp()) * 1_000_000)


def test_a_feature_whose_values_cannot_be_profiled_is_left_out_and_counted_while_the_rest_is_profiled() -> (
    None
):
    view = FeatureView("odd", (U,), (Feature("n", DType.INT64), Feature("tier", DType.STRING)))
    # a column that is not what the view says (strings for an int64 feature): no float64 cast exists
    table = pa.table({"account_id": [1, 2], "n": ["x", "y"], "tier": ["free", "pro"]})
    before = REGISTRY.get_sample_value(
        "featurestore_feature_profile_failures_total", {"view": "odd", "feature": "n"}
    )
    builder = ProfileBuilder(view, 3, seed=0)
    builder.add(table)
    builder.add(table)
    profile = builder.build()
    assert set(profile.features) == {"tier"} and profile.rows == 4
    assert profile.features["tier"].categories == {"free": 2, "pro": 2}
    after = REGISTRY.get_sample_value(
        "featurestore_feature_profile_failures_total", {"view": "odd", "feature": "n"}
    )
    assert (after or 0) - (before or 0) == 1  # once per profile, not per batch


def test_a_string_feature_with_a_value_per_row_is_profiled_in_bounded_memory() -> None:
    """A URL or e-mail feature kept every distinct value counted until ``build()`` (about
    190 B each: 290 MB of a 1.5M-row run, review s55). Now at most MAX_COUNTED counters
    outlive a batch; the frequent values keep counts within rows / (MAX_COUNTED + 1) of
    the truth, and the rest of the rows are ``OTHER``, so a drift test sees the same mix."""
    view = FeatureView("pages", (U,), (Feature("url", DType.STRING),))
    builder = ProfileBuilder(view, 1, seed=0)
    rows, batch = 300_000, 20_000
    hot = {"/a": 20, "/b": 10, "/c": 5, "/d": 2}  # per 100 rows; the other 63 a page of their own

    def url(i: int) -> str:
        at = i % 100
        for page, share in hot.items():
            if at < share:
                return page
            at -= share
        return f"/cold/{i}"

    for start in range(0, rows, batch):
        ids = range(start, start + batch)
        builder.add(pa.table({"account_id": list(ids), "url": [url(i) for i in ids]}))
        assert len(builder._counts["url"]) <= MAX_COUNTED  # what outlives the batch
    profile = builder.build().features["url"]
    assert profile.count == rows and profile.categories is not None
    assert set(profile.categories) == {*hot, OTHER} and sum(profile.categories.values()) == rows
    error = rows // (MAX_COUNTED + 1)
    for page, share in hot.items():
        assert rows * share // 100 - error <= profile.categories[page] <= rows * share // 100


def test_a_feature_with_fewer_values_than_the_counters_is_counted_exactly() -> None:
    view = FeatureView("tiers", (U,), (Feature("tier", DType.STRING),))
    builder = ProfileBuilder(view, 1, seed=0)
    for start in range(0, 60_000, 10_000):
        builder.add(
            pa.table(
                {
                    "account_id": range(start, start + 10_000),
                    "tier": [f"t{i % 1500}" for i in range(start, start + 10_000)],
                }
            )
        )
    categories = builder.build().features["tier"].categories
    assert categories is not None and len(categories) == MAX_CATEGORIES and OTHER in categories
    assert all(n == 40 for k, n in categories.items() if k != OTHER)  # 60,000 / 1,500 each, exactly
    assert categories[OTHER] == 60_000 - 40 * (MAX_CATEGORIES - 1)
