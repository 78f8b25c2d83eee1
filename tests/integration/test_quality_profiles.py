"""Reference profiles are materialized with each data version into real Redis and
ClickHouse stores, and the drift monitor's reference swaps with the served version;
the consistency check reads a store directly (``--config``)."""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from featurestore.materialize import Materializer
from featurestore.model import DType, Entity, Feature, FeatureView, make_definitions
from featurestore.offline import ParquetOfflineSource
from featurestore.quality.monitor import DriftMonitor
from featurestore.quality.profile import Profile
from featurestore.quality.sampler import Window
from featurestore.registry.file import FileRegistry
from featurestore.sources.base import OnlineSource, ProfileStore
from featurestore.sources.clickhouse import ClickHouseOnlineSource, ClickHouseOptions
from featurestore.sources.redis import RedisOptions, RedisSource
from tests.support import REDIS_CONNECT_MS, ROOT

U = Entity("user_id", DType.INT64)
V = FeatureView(
    "scores", (U,), (Feature("score", DType.FLOAT64), Feature("tier", DType.STRING)), online_store="default"
)
N = 20_000
TS0 = 1_704_067_200_000_000


def write_source(path: Path, mean: float, tiers: list[str], seed: int) -> Path:
    rng = np.random.default_rng(seed)
    pq.write_table(
        pa.table(
            {
                "user_id": pa.array(np.arange(N), pa.int64()),
                "score": pa.array(rng.normal(mean, 1.0, N)),
                "tier": pa.array(rng.choice(tiers, N)),
                "event_timestamp": pa.array(TS0 + np.arange(N), pa.timestamp("us", tz="UTC")),
            }
        ),
        path,
    )
    return path


@pytest.fixture(params=["redis", "clickhouse"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[OnlineSource]:
    project = f"q{uuid.uuid4().hex[:8]}"
    src: OnlineSource
    if request.param == "redis":
        url = request.getfixturevalue("redis_server").url
        src = RedisSource("default", project, RedisOptions(url=url, connect_timeout_ms=REDIS_CONNECT_MS))
    else:
        src = ClickHouseOnlineSource(
            "default", project, ClickHouseOptions(dsn=request.getfixturevalue("chdb_dsn"))
        )
    await src.start()
    await src.prepare([V])
    yield src
    await src.close()


async def test_each_materialized_version_keeps_its_own_profile_and_the_reference_swaps_with_it(
    store: OnlineSource, tmp_path: Path
) -> None:
    registry = FileRegistry(tmp_path / "reg", "p")
    await registry.publish(make_definitions("p", [U], [V], []), expected_version=None)
    job = Materializer(registry, store, grace_seconds=60)
    first = write_source(tmp_path / "a.parquet", 0.0, ["free", "plus"], seed=1)
    second = write_source(tmp_path / "b.parquet", 2.0, ["pro"], seed=2)
    r1 = await job.run("scores", ParquetOfflineSource(str(first)), batch_rows=5000)
    r2 = await job.run("scores", ParquetOfflineSource(str(second)), batch_rows=5000)
    assert isinstance(store, ProfileStore)
    p1 = Profile.from_bytes(await store.read_profile(V, r1.data_version) or b"")
    p2 = Profile.from_bytes(await store.read_profile(V, r2.data_version) or b"")
    assert (p1.data_version, p1.rows, p2.data_version, p2.rows) == (1, N, 2, N)
    s1, s2 = p1.features["score"].sample, p2.features["score"].sample
    assert s1 is not None and s2 is not None and len(s1) == len(s2) == 5000
    assert abs(float(np.mean(s1))) < 0.1 and abs(float(np.mean(s2)) - 2.0) < 0.1
    assert set(p1.features["tier"].categories or {}) == {"free", "plus"}
    assert p2.features["tier"].categories == {"pro": N}

    # values like the second version's: drift against version 1's reference, none against 2's
    monitor = DriftMonitor({"default": store})
    values = np.random.default_rng(3).normal(2.0, 1.0, 1000).tolist()
    [old, _] = await monitor.check(Window(V, "score", False, r1.data_version, values))
    [new, _] = await monitor.check(Window(V, "score", False, r2.data_version, values))
    assert old.drifted and old.data_version == 1
    assert not new.drifted and new.data_version == 2


def test_check_consistency_reads_a_redis_store_directly_with_config(
    redis_server: object, tmp_path: Path
) -> None:
    url = redis_server.url  # type: ignore[attr-defined]
    data = write_source(tmp_path / "s.parquet", 0.0, ["free"], seed=4)
    project = f"q{uuid.uuid4().hex[:8]}"  # its own keys on the shared Redis
    defs = tmp_path / "features.yaml"
    defs.write_text(
        f"project: {project}\nentities:\n  - {{name: user_id, dtype: int64}}\n"
        "feature_views:\n  - name: scores\n    entities: [user_id]\n"
        f"    batch_source: {{path: {data}}}\n"
        "    features:\n      - {name: score, dtype: float64}\n      - {name: tier, dtype: string}\n"
    )
    config = tmp_path / "c.yaml"
    config.write_text(
        f"project: {project}\nregistry: {{path: {tmp_path / 'reg'}}}\n"
        f"stores: {{default: {{kind: redis, url: '{url}'}}}}\n"
    )

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "featurestore.cli", *args],
                              capture_output=True, text=True, timeout=120, cwd=ROOT)  # fmt: skip

    assert (
        run("materialize", "--config", str(config), "--definitions", str(defs), "--all", "--quiet").returncode
        == 0
    )
    out = run(
        "check", "consistency", "--view", "scores", "--config", str(config), "--sample", "500", "--json"
    )
    assert out.returncode == 0, out.stderr
    assert '"checked": 500, "consistent": 500' in out.stdout


async def test_a_view_with_ids_beyond_2_53_and_year_9999_timestamps_materializes_into_redis_with_its_profile(
    redis_server: object, tmp_path: Path
) -> None:
    big, far = 2**53 + 1, 253_402_214_400_000_000  # a snowflake-style id; 9999-12-31 in epoch µs
    view = FeatureView(
        "accounts",
        (U,),
        (Feature("last_txn_id", DType.INT64), Feature("expires_at", DType.TIMESTAMP)),
        online_store="default",
    )
    path = tmp_path / "accounts.parquet"
    pq.write_table(
        pa.table(
            {
                "user_id": pa.array([1, 2], pa.int64()),
                "last_txn_id": pa.array([17, big], pa.int64()),
                "expires_at": pa.array([TS0, far], pa.timestamp("us", tz="UTC")),
                "event_timestamp": pa.array([TS0, TS0], pa.timestamp("us", tz="UTC")),
            }
        ),
        path,
    )
    url = redis_server.url  # type: ignore[attr-defined]
    store = RedisSource(
        "default", f"q{uuid.uuid4().hex[:8]}", RedisOptions(url=url, connect_timeout_ms=REDIS_CONNECT_MS)
    )
    await store.start()
    try:
        await store.prepare([view])
        registry = FileRegistry(tmp_path / "reg", "p")
        await registry.publish(make_definitions("p", [U], [view], []), expected_version=None)
        result = await Materializer(registry, store, grace_seconds=60).run(
            "accounts", ParquetOfflineSource(str(path))
        )
        assert result.rows_written == 2
        profile = Profile.from_bytes(await store.read_profile(view, result.data_version) or b"")
        ids, expiry = profile.features["last_txn_id"].sample, profile.features["expires_at"].sample
        assert ids is not None and sorted(ids.tolist()) == [17.0, float(big)]
        assert expiry is not None and expiry.max() == float(far)
    finally:
        await store.close()
