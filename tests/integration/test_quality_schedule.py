"""The server's scheduled consistency check exports its counts as metrics."""

from __future__ import annotations

import asyncio
import logging
import re
import time
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from prometheus_client import REGISTRY

import featurestore.jobs
from featurestore.config import Config
from featurestore.definitions.snapshot import new_snapshot
from featurestore.model import BatchSource, DType, Entity, Feature, FeatureView, make_definitions
from featurestore.offline import ParquetOfflineSource
from featurestore.plan import ServingState
from featurestore.quality.consistency import offline_rows, offline_sides, sample_keys, sample_offline
from featurestore.quality.schedule import ConsistencySchedule
from featurestore.registry.base import Watermark
from featurestore.registry.file import FileRegistry
from featurestore.sources.base import ViewQuery, ViewRead
from featurestore.sources.memory import MemorySource

U = Entity("user_id", DType.INT64)


def sample(name: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


async def test_a_scheduled_check_exports_counts_and_fails_on_a_conflict(tmp_path: Path) -> None:
    path = tmp_path / "s.parquet"
    n = 500
    pq.write_table(
        pa.table(
            {
                "user_id": pa.array(np.arange(n), pa.int64()),
                "score": pa.array(np.arange(n, dtype=np.float64)),
                "event_timestamp": pa.array(np.full(n, 1_000_000), pa.timestamp("us", tz="UTC")),
            }
        ),
        path,
    )
    view = FeatureView(
        "sched", (U,), (Feature("score", DType.FLOAT64),), batch_source=BatchSource(path=str(path))
    )
    state = ServingState(new_snapshot(make_definitions("p", [U], [view], []), 1), {"sched": 0})
    store = MemorySource("default")
    await store.prepare([view])
    config = Config.model_validate({"quality": {"consistency": {"views": ["sched"], "sample": 100}}})
    schedule = ConsistencySchedule(config, {"default": store}, lambda: state)
    # every outcome's series is there from 0 before the first check (FeatureSkewCheckFailing's
    # increase() would miss a first one born at 1)
    for outcome in ("ok", "mismatch", "error"):
        assert sample("featurestore_consistency_checks_total", view="sched", outcome=outcome) == 0
    # FeatureSkewCheckFailing's clock: from the schedule's start until a check completes
    started = sample("featurestore_consistency_schedule_started_timestamp_seconds", view="sched")
    assert started is not None and abs(started - time.time()) < 60
    assert sample("featurestore_consistency_last_completed_timestamp_seconds", view="sched") is None
    assert sample("featurestore_consistency_interval_seconds", view="sched") == 3600

    await asyncio.sleep(0.01)
    report = await schedule.check_view("sched")
    assert report is not None and report.counts["consistent"] == 100
    completed = sample("featurestore_consistency_last_completed_timestamp_seconds", view="sched")
    assert completed is not None and completed > started
    assert sample("featurestore_consistency_keys", view="sched", **{"class": "consistent"}) == 100
    assert sample("featurestore_consistency_failed", view="sched") == 0

    # every key pushed with the same event time and another value: all conflicts
    pushed = pa.table(
        {
            "user_id": pa.array(np.arange(n), pa.int64()),
            "score": pa.array(np.full(n, -1.0)),
            "event_timestamp": pa.array(np.full(n, 1_000_000), pa.timestamp("us", tz="UTC")),
        }
    )
    await store.write(view, pushed, 0)
    report = await schedule.check_view("sched")
    assert report is not None and report.counts["conflict"] == 100
    assert sample("featurestore_consistency_keys", view="sched", **{"class": "conflict"}) == 100
    assert sample("featurestore_consistency_failed", view="sched") == 1
    assert sample("featurestore_consistency_checks_total", view="sched", outcome="mismatch") == 1

    assert await schedule.check_view("nope") is None
    assert sample("featurestore_consistency_checks_total", view="nope", outcome="error") == 1


def test_a_server_with_views_to_check_exports_their_consistency(tmp_path: Path) -> None:
    import re

    from tests.support import ServerProcess, http_get, wait_until

    config = tmp_path / "c.yaml"
    config.write_text(
        "stores: {default: {kind: memory}, analytics: {kind: memory}}\n"
        "quality: {consistency: {views: [user_profile], interval_seconds: 3600, sample: 100}}\n"
    )
    proc = ServerProcess(
        ["--demo", "--data-dir", str(tmp_path / "data"), "--config", str(config)], log_path=tmp_path / "log"
    )
    proc.start(timeout=90)
    try:
        pattern = re.compile(
            r'^featurestore_consistency_keys\{class="consistent",view="user_profile"\} (\S+)$', re.M
        )

        def consistent() -> float | None:
            m = pattern.search(http_get(proc.url + "/metrics")[1].decode())
            return float(m.group(1)) if m else None

        wait_until(lambda: consistent() is not None, 60, "the first scheduled check")
        assert consistent() == 100
        metrics = http_get(proc.url + "/metrics")[1].decode()
        assert 'featurestore_consistency_failed{view="user_profile"} 0.0' in metrics
    finally:
        proc.stop()


class _RecordingStore(MemorySource):
    """The memory store, remembering which keys each read asked for."""

    def __init__(self) -> None:
        super().__init__("default")
        self.asked: list[list[object]] = []

    async def read(self, queries: Sequence[ViewQuery]) -> list[ViewRead | BaseException]:
        self.asked += [list(q.keys) for q in queries]
        return await super().read(queries)


async def test_every_scheduled_check_samples_other_keys_and_logs_the_seed_that_picks_them(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A fixed seed checked the same 100 of 1,000 keys every run: the other 900 were never
    looked at. Each run draws a seed, logged: `check consistency --seed` reproduces it."""
    path = tmp_path / "s.parquet"
    n = 1000
    pq.write_table(
        pa.table(
            {
                "user_id": pa.array(np.arange(n), pa.int64()),
                "score": pa.array(np.arange(n, dtype=np.float64)),
                "event_timestamp": pa.array(np.full(n, 1_000_000), pa.timestamp("us", tz="UTC")),
            }
        ),
        path,
    )
    view = FeatureView(
        "seeded", (U,), (Feature("score", DType.FLOAT64),), batch_source=BatchSource(path=str(path))
    )
    state = ServingState(new_snapshot(make_definitions("p", [U], [view], []), 1), {"seeded": 0})
    store = _RecordingStore()
    await store.prepare([view])
    config = Config.model_validate({"quality": {"consistency": {"views": ["seeded"], "sample": 100}}})
    schedule = ConsistencySchedule(config, {"default": store}, lambda: state)
    runs = []
    with caplog.at_level(logging.INFO, logger="featurestore.quality.schedule"):
        for _ in range(3):
            store.asked.clear()
            caplog.clear()
            assert await schedule.check_view("seeded") is not None
            [line] = [r.getMessage() for r in caplog.records if "consistency of seeded" in r.getMessage()]
            seed = int(re.search(r"sample seed (\d+)", line).group(1))  # type: ignore[union-attr]
            runs.append(([k for keys in store.asked for k in keys], seed))
    assert len({tuple(keys) for keys, _ in runs}) == 3  # three different samples of 100
    offline = offline_sides(view, await offline_rows(view, ParquetOfflineSource(str(path))))
    for keys, seed in runs:  # what the CLI samples with that seed
        assert sample_keys(offline, 100, seed=seed) == keys


def _write(path: Path, rows: list[tuple[int, float, int]]) -> None:
    pq.write_table(
        pa.table(
            {
                "user_id": pa.array([r[0] for r in rows], pa.int64()),
                "score": pa.array([r[1] for r in rows], pa.float64()),
                "event_timestamp": pa.array([r[2] for r in rows], pa.timestamp("us", tz="UTC")),
            }
        ),
        path,
    )


async def test_the_scheduled_check_fails_on_lost_keys_and_not_on_rows_added_since_the_watermark(
    tmp_path: Path,
) -> None:
    """Keys the served version loaded and no longer has are mismatches (10,000 of 10,000
    missing passed); rows added to the batch source after the served version's
    watermark are pending, not stale (they failed the check at max_mismatch 0)."""
    t1, t2 = 1_000_000, 2_000_000
    path = tmp_path / "w.parquet"
    loaded = [(k, float(k), t1) for k in range(500)]
    _write(path, loaded)
    view = FeatureView(
        "marked", (U,), (Feature("score", DType.FLOAT64),), batch_source=BatchSource(path=str(path))
    )
    state = ServingState(new_snapshot(make_definitions("p", [U], [view], []), 1), {"marked": 0})
    store = MemorySource("default")
    await store.prepare([view])  # what the served version holds: keys 0..499 as of t1
    registry = FileRegistry(tmp_path / "reg", "p")
    await registry.set_watermark("marked", Watermark(0, t1), expected=None)
    config = Config.model_validate({"quality": {"consistency": {"views": ["marked"], "sample": 10_000}}})
    schedule = ConsistencySchedule(config, {"default": store}, lambda: state, registry=registry)

    # newer rows for keys 0..99 and new keys 500..599, all after the watermark: pending
    _write(path, [*loaded, *((k, -1.0, t2) for k in range(100)), *((k, 0.0, t2) for k in range(500, 600))])
    report = await schedule.check_view("marked")
    assert report is not None and (report.counts["consistent"], report.counts["pending"]) == (400, 200)
    assert report.counts["stale"] == report.counts["missing_online"] == 0
    assert sample("featurestore_consistency_failed", view="marked") == 0

    # keys 600..649 as of t1: the served version should hold them and does not
    _write(path, [*loaded, *((k, 0.0, t1) for k in range(600, 650))])
    report = await schedule.check_view("marked")
    assert report is not None and report.counts["missing_online"] == 50 and report.mismatches == 50
    assert sample("featurestore_consistency_failed", view="marked") == 1
    assert sample("featurestore_consistency_keys", view="marked", **{"class": "missing_online"}) == 50


async def test_the_streaming_sample_picks_what_sample_keys_picks_with_the_latest_rows(tmp_path: Path) -> None:
    """sample_offline keeps a reservoir batch by batch; with one seed it picks the keys
    sample_keys picks from the whole source (the CLI), with each key's latest row."""
    path = tmp_path / "dup.parquet"
    n = 20_000
    rows = [(k, float(k), 1_000_000) for k in range(n)] + [(k, -float(k), 2_000_000) for k in range(0, n, 7)]
    _write(path, rows)
    view = FeatureView(
        "dup", (U,), (Feature("score", DType.FLOAT64),), batch_source=BatchSource(path=str(path))
    )
    whole = offline_sides(view, await offline_rows(view, ParquetOfflineSource(str(path))))
    for seed in (0, 1, 2):
        sampled = await sample_offline(view, ParquetOfflineSource(str(path)), 300, seed, batch_rows=1000)
        assert list(sampled) == sample_keys(whole, 300, seed=seed)
        assert all(side == whole[k] for k, side in sampled.items())
    assert any(side.ts_us == 2_000_000 for side in sampled.values())  # latest rows, not first ones
    assert await sample_offline(view, ParquetOfflineSource(str(path)), 50_000, 0) == whole  # all of it


async def test_a_scheduled_check_holds_its_sample_not_the_whole_batch_source_in_memory(
    tmp_path: Path,
) -> None:
    """It built a dict of every key of the source in serving worker 0 (~0.5 KB of Python
    objects per key: a 50M-key view could not be checked): now one streaming pass keeps the
    sample's rows. Python allocations at peak, checking 100 of 200,000 keys: ~4 MB (55 MB
    before)."""
    path = tmp_path / "big.parquet"
    n = 200_000
    pq.write_table(
        pa.table(
            {
                "user_id": pa.array(np.arange(n), pa.int64()),
                "score": pa.array(np.arange(n, dtype=np.float64)),
                "event_timestamp": pa.array(np.full(n, 1_000_000), pa.timestamp("us", tz="UTC")),
            }
        ),
        path,
    )
    view = FeatureView(
        "big", (U,), (Feature("score", DType.FLOAT64),), batch_source=BatchSource(path=str(path))
    )
    state = ServingState(new_snapshot(make_definitions("p", [U], [view], []), 1), {"big": 0})
    store = MemorySource("default")
    await store.prepare([view])
    config = Config.model_validate({"quality": {"consistency": {"views": ["big"], "sample": 100}}})
    schedule = ConsistencySchedule(config, {"default": store}, lambda: state)
    tracemalloc.start()
    try:
        report = await schedule.check_view("big")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert report is not None and report.counts["consistent"] == 100
    assert peak < 20_000_000, peak


class _LandingSource(ParquetOfflineSource):
    """The view's Parquet batch source; before its first read a materialization lands
    (the pointer moved to version 2, then its watermark: another process, here another
    registry client), as if one finished while the check sampled."""

    def __init__(self, path: str, land: Callable[[], Awaitable[None]]) -> None:
        super().__init__(path)
        self._land: Callable[[], Awaitable[None]] | None = land

    async def latest_batches(self, *args: Any, **kwargs: Any) -> AsyncIterator[pa.RecordBatch]:
        if self._land is not None:
            land, self._land = self._land, None
            await land()
        async for batch in super().latest_batches(*args, **kwargs):
            yield batch


def _marked_view(tmp_path: Path, name: str) -> tuple[FeatureView, Path, list[tuple[int, float, int]]]:
    """A view whose batch source has keys 0..99 as of t1 (what the served version loaded)."""
    path = tmp_path / f"{name}.parquet"
    loaded = [(k, float(k), 1_000_000) for k in range(100)]
    _write(path, loaded)
    view = FeatureView(
        name, (U,), (Feature("score", DType.FLOAT64),), batch_source=BatchSource(path=str(path))
    )
    return view, path, loaded


async def test_a_materialization_landing_during_a_scheduled_check_does_not_make_rows_it_loaded_stale(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The watermark was read after the sample: a run landing meanwhile gave the new
    version's watermark, not the checked version's, so the check went without one and
    called the rows added since (which that run loaded) stale."""
    view, path, loaded = _marked_view(tmp_path, "landing")
    defs = new_snapshot(make_definitions("p", [U], [view], []), 1)
    states = [ServingState(defs, {"landing": 1})]
    registry = FileRegistry(tmp_path / "reg", "p")
    await registry.set_watermark("landing", Watermark(1, 1_000_000), expected=None)

    async def land() -> None:
        states.append(ServingState(defs, {"landing": 2}))
        other = FileRegistry(tmp_path / "reg", "p")
        await other.set_watermark("landing", Watermark(2, 2_000_000), expected=Watermark(1, 1_000_000))

    monkeypatch.setattr(featurestore.jobs, "default_source", lambda v, *_: _LandingSource(str(path), land))
    store = MemorySource("default")
    await store.prepare([view])  # version 1 (any version of the memory store): keys 0..99 as of t1
    config = Config.model_validate({"quality": {"consistency": {"views": ["landing"], "sample": 1000}}})
    schedule = ConsistencySchedule(config, {"default": store}, lambda: states[-1], registry=registry)
    _write(path, [*loaded, *((k, -1.0, 2_000_000) for k in range(20))])  # what the landing run loads

    report = await schedule.check_view("landing")
    assert len(states) == 2  # it did land during the check
    assert report is not None and (report.counts["consistent"], report.counts["pending"]) == (80, 20)
    assert report.mismatches == 0
    assert sample("featurestore_consistency_failed", view="landing") == 0


class _MarkingRegistry(FileRegistry):
    """A file registry whose first watermark read is answered before a materialization
    that already moved the pointer to version 2 records its watermark, just after."""

    marked = False

    async def watermark(self, view: str) -> Watermark | None:
        mark = await super().watermark(view)
        if not self.marked:
            self.marked = True
            await self.set_watermark(view, Watermark(2, 1_000_000), expected=mark)
        return mark


async def test_a_scheduled_check_between_a_pointer_swap_and_its_watermark_waits_for_the_watermark(
    tmp_path: Path,
) -> None:
    """Materialization moves the pointer, then the watermark: a check between them found
    the old version's watermark, went without one, and called every row added since the
    new version's load stale (a false FeatureSkew)."""
    view, path, loaded = _marked_view(tmp_path, "swapped")
    state = ServingState(new_snapshot(make_definitions("p", [U], [view], []), 1), {"swapped": 2})
    registry = _MarkingRegistry(tmp_path / "reg", "p")
    await registry.set_watermark("swapped", Watermark(1, 500_000), expected=None)
    store = MemorySource("default")
    await store.prepare([view])  # version 2 loaded keys 0..99 as of t1
    config = Config.model_validate({"quality": {"consistency": {"views": ["swapped"], "sample": 1000}}})
    schedule = ConsistencySchedule(config, {"default": store}, lambda: state, registry=registry)
    schedule.settle_seconds = 0.01
    _write(path, [*loaded, *((k, -1.0, 2_000_000) for k in range(30))])  # added since that load

    report = await schedule.check_view("swapped")
    assert report is not None and (report.counts["consistent"], report.counts["pending"]) == (70, 30)
    assert report.counts["stale"] == 0
