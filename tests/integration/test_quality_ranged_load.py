"""The scheduled consistency check of a view materialized with ``--start``, end to end:
a real Redis store and a real etcd registry, the watermark as materialization records it."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from prometheus_client import REGISTRY

from featurestore.config import Config
from featurestore.materialize import Materializer
from featurestore.model import BatchSource, DType, Entity, Feature, FeatureView, make_definitions
from featurestore.offline import EventTimeRange, ParquetOfflineSource
from featurestore.plan import ServingState
from featurestore.quality.schedule import ConsistencySchedule
from featurestore.registry.base import Watermark
from featurestore.registry.etcd import EtcdRegistry
from featurestore.sources.redis import RedisOptions, RedisSource
from tests.servers import EtcdServer, RedisServer
from tests.support import REDIS_CONNECT_MS, ROOT

U = Entity("user_id", DType.INT64)
TS0 = 1_704_067_200_000_000
START = TS0 + 1_000  # the run's --start


def write(path: Path, rows: list[tuple[int, float, int]]) -> None:
    """Rows (user, score, event time offset from TS0 in µs)."""
    pq.write_table(
        pa.table(
            {
                "user_id": pa.array([r[0] for r in rows], pa.int64()),
                "score": pa.array([r[1] for r in rows], pa.float64()),
                "event_timestamp": pa.array([TS0 + r[2] for r in rows], pa.timestamp("us", tz="UTC")),
            }
        ),
        path,
    )


Setup = tuple[EtcdRegistry, RedisSource, Path, Path]  # the last: a server config naming both


@pytest.fixture
async def ranged(redis_server: RedisServer, etcd_server: EtcdServer, tmp_path: Path) -> AsyncIterator[Setup]:
    path = tmp_path / "ranged.parquet"
    view = FeatureView(
        "ranged",
        (U,),
        (Feature("score", DType.FLOAT64),),
        online_store="default",
        batch_source=BatchSource(path=str(path)),
    )
    project = f"q{uuid.uuid4().hex[:8]}"
    registry = EtcdRegistry([etcd_server.endpoint], project)
    await registry.publish(make_definitions(project, [U], [view], []), expected_version=None)
    store = RedisSource(
        "default", project, RedisOptions(url=redis_server.url, connect_timeout_ms=REDIS_CONNECT_MS)
    )
    await store.start()
    config = tmp_path / "server.yaml"
    config.write_text(
        f"project: {project}\nregistry: {{kind: etcd, endpoints: ['{etcd_server.endpoint}']}}\n"
        f"stores: {{default: {{kind: redis, url: '{redis_server.url}', "
        f"connect_timeout_ms: {REDIS_CONNECT_MS}}}}}\n"
    )
    yield registry, store, path, config
    await store.close()
    await registry.close()


async def schedule_of(registry: EtcdRegistry, store: RedisSource) -> ConsistencySchedule:
    snapshot = await registry.current()
    assert snapshot is not None
    state = ServingState(snapshot, await registry.data_versions())
    config = Config.model_validate({"quality": {"consistency": {"views": ["ranged"], "sample": 10_000}}})
    return ConsistencySchedule(config, {"default": store}, lambda: state, registry=registry)


def gauge(name: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


async def test_keys_a_materialization_from_a_start_never_loaded_are_not_loaded_not_missing_online(
    ranged: Setup,
) -> None:
    """The watermark recorded no range start: every key whose latest row is older than a
    ``--start`` run's start counted as missing_online, a mismatch, and FeatureSkew fired
    every run for a view materialized as designed."""
    registry, store, path, _ = ranged
    old = [(k, float(k), 10) for k in range(40)]  # latest row before the start: not loaded
    loaded = [(k, float(k), 2_000 + k) for k in range(40, 100)]
    write(path, [*old, *loaded])
    job = Materializer(registry, store)
    run = await job.run("ranged", ParquetOfflineSource(str(path)), span=EventTimeRange(start_us=START))
    assert run.rows_written == 60

    report = await (await schedule_of(registry, store)).check_view("ranged")
    assert report is not None and (report.counts["missing_online"], report.mismatches) == (0, 0)
    assert (report.counts["consistent"], report.counts["not_loaded"]) == (60, 40)
    assert await registry.watermark("ranged") == Watermark(1, TS0 + 2_099, START)
    assert gauge("featurestore_consistency_keys", view="ranged", **{"class": "not_loaded"}) == 40
    assert gauge("featurestore_consistency_failed", view="ranged") == 0

    # keys inside the loaded range that the store does not hold are still lost keys
    write(path, [*old, *loaded, *((k, 0.0, 1_500) for k in range(100, 110))])
    report = await (await schedule_of(registry, store)).check_view("ranged")
    assert report is not None and (report.counts["missing_online"], report.counts["not_loaded"]) == (10, 40)
    assert gauge("featurestore_consistency_failed", view="ranged") == 1

    # an incremental run adds to the same version, whose rows still begin at the start
    write(path, [*old, *loaded, *((k, -1.0, 3_000) for k in range(100, 110))])
    inc = await job.run("ranged", ParquetOfflineSource(str(path)), incremental=True)
    assert inc.incremental and await registry.watermark("ranged") == Watermark(1, TS0 + 3_000, START)
    report = await (await schedule_of(registry, store)).check_view("ranged")
    assert report is not None
    assert (report.counts["consistent"], report.counts["not_loaded"], report.mismatches) == (70, 40, 0)

    # a full run without --start loads every key: nothing is left out
    await job.run("ranged", ParquetOfflineSource(str(path)))
    assert await registry.watermark("ranged") == Watermark(2, TS0 + 3_000)
    report = await (await schedule_of(registry, store)).check_view("ranged")
    assert report is not None and (report.counts["consistent"], report.counts["not_loaded"]) == (110, 0)


async def cli_check(config: Path) -> tuple[int, dict[str, Any]]:
    out = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "featurestore.cli", "check", "consistency", "--view", "ranged",
         "--config", str(config), "--sample", "10000", "--json"],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )  # fmt: skip
    assert out.returncode in (0, 1), out.stderr
    return out.returncode, json.loads(out.stdout)


async def test_the_cli_with_config_classifies_by_the_served_versions_watermark_as_the_scheduled_check(
    ranged: Setup,
) -> None:
    """The CLI read no watermark: for a view materialized with ``--start`` it reported the
    keys the run never loaded as missing_online and exited 1, where the scheduled check
    (which the FeatureSkew runbook sends the operator to reproduce) says not_loaded."""
    registry, store, path, config = ranged
    old = [(k, float(k), 10) for k in range(40)]  # latest row before the start: not loaded
    loaded = [(k, float(k), 2_000 + k) for k in range(40, 100)]
    write(path, [*old, *loaded])
    job = Materializer(registry, store)
    await job.run("ranged", ParquetOfflineSource(str(path)), span=EventTimeRange(start_us=START))

    code, report = await cli_check(config)
    assert code == 0, report
    assert (report["consistent"], report["not_loaded"], report["missing_online"]) == (60, 40, 0), report

    # rows added to the source since the run: pending (the next run loads them), not missing
    write(path, [*old, *loaded, *((k, 0.0, 3_000) for k in range(100, 110))])
    code, report = await cli_check(config)
    assert code == 0 and (report["pending"], report["missing_online"]) == (10, 0), report

    # keys inside the loaded range that the store does not hold are still lost keys
    write(path, [*old, *loaded, *((k, 0.0, 1_500) for k in range(100, 110))])
    code, report = await cli_check(config)
    assert code == 1 and (report["missing_online"], report["not_loaded"]) == (10, 40), report
