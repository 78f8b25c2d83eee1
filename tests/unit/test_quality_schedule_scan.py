"""The scheduled consistency check's scan of the batch source: its deadline is a setting,
a scan given up on stops reading, and nothing waits for a hung read at exit (review 2,
s54, findings 3 and 4)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import numpy as np
import pyarrow as pa
import pytest
from prometheus_client import REGISTRY

import featurestore.jobs
from featurestore.config import Config, load_config
from featurestore.definitions.snapshot import new_snapshot
from featurestore.errors import InvalidArgument
from featurestore.model import BatchSource, DType, Entity, Feature, FeatureView, make_definitions
from featurestore.plan import ServingState
from featurestore.quality.schedule import ConsistencySchedule
from featurestore.registry.base import Registry, Watermark
from featurestore.sources.base import OnlineSource, ViewQuery, ViewRead

ROOT = Path(__file__).parents[2]
U = Entity("user_id", DType.INT64)


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


class _SlowSource:
    """A batch source streaming ``batches`` batches (None: forever) of 10 keys each, one
    every ``every`` seconds, each read in ``asyncio.to_thread`` as the real sources read."""

    def __init__(self, batches: int | None, every: float) -> None:
        self.batches, self.every, self.read = batches, every, 0

    def describe(self) -> str:
        return "slow"

    async def latest_batches(self, *_: Any, **__: Any) -> AsyncIterator[pa.RecordBatch]:
        while self.batches is None or self.read < self.batches:
            await asyncio.to_thread(time.sleep, self.every)
            keys = np.arange(self.read * 10, self.read * 10 + 10)
            self.read += 1
            yield pa.record_batch(
                {
                    "user_id": pa.array(keys, pa.int64()),
                    "score": pa.array(keys.astype(np.float64)),
                    "event_timestamp": pa.array(np.full(10, 1_000_000), pa.timestamp("us", tz="UTC")),
                }
            )


class _Store:
    """Every key as the source holds it."""

    async def read(self, queries: list[ViewQuery]) -> list[ViewRead]:
        keys = queries[0].keys
        return [ViewRead([True] * len(keys), [1_000_000] * len(keys), [[float(k) for k in keys]])]  # type: ignore[arg-type]


class _NoWatermarks:
    async def watermark(self, name: str) -> Watermark | None:
        return None

    async def close(self) -> None:
        pass


def _schedule(
    name: str, source: _SlowSource, monkeypatch: pytest.MonkeyPatch, **consistency: Any
) -> ConsistencySchedule:
    view = FeatureView(
        name, (U,), (Feature("score", DType.FLOAT64),), batch_source=BatchSource(path="/nowhere")
    )
    state = ServingState(new_snapshot(make_definitions("p", [U], [view], []), 1), {name: 0})
    config = Config.model_validate(
        {"quality": {"consistency": {"views": [name], "sample": 5, **consistency}}}
    )
    monkeypatch.setattr(featurestore.jobs, "default_source", lambda *_: source)
    return ConsistencySchedule(
        config, {"default": cast(OnlineSource, _Store())}, lambda: state, cast(Registry, _NoWatermarks())
    )


def test_the_check_deadline_is_a_positive_setting_of_its_own_hours_by_default(tmp_path: Path) -> None:
    """It was the interval clamped to 5 min..1 h: a daily check's 70-min scan erred every day."""
    daily = Config.model_validate({"quality": {"consistency": {"interval_seconds": 86_400}}})
    assert daily.quality.consistency.timeout_seconds == 14_400
    path = tmp_path / "c.yaml"
    for bad in ("0", "-5"):
        path.write_text(f"quality: {{consistency: {{timeout_seconds: {bad}}}}}\n")
        with pytest.raises(InvalidArgument, match=r"quality\.consistency\.timeout_seconds"):
            load_config(path)


async def test_a_scan_longer_than_the_interval_completes_within_the_configured_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    schedule = _schedule(
        "long_scan", _SlowSource(8, 0.1), monkeypatch, interval_seconds=0.2, timeout_seconds=30
    )
    report = await schedule.check_view("long_scan")
    assert report is not None and report.checked == 5 and report.counts["consistent"] == 5
    assert sample("featurestore_consistency_checks_total", view="long_scan", outcome="ok") == 1


async def test_a_scan_cut_by_the_deadline_stops_reading_the_batch_source(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The thread read the whole source after the check gave up: the warehouse's load
    stayed, and the next round found the scan still alive and erred too."""
    source = _SlowSource(None, 0.05)  # endless
    schedule = _schedule("cut_scan", source, monkeypatch, timeout_seconds=0.3)
    assert await schedule.check_view("cut_scan") is None
    await asyncio.sleep(0.3)
    read = source.read
    await asyncio.sleep(0.3)
    assert source.read == read
    assert not schedule._scans["cut_scan"].is_alive()
    assert sample("featurestore_consistency_checks_total", view="cut_scan", outcome="error") == 1


def test_a_stopped_server_exits_at_once_though_a_scan_hangs_in_a_read_of_the_batch_source() -> None:
    """The reads ran in the scan loop's default executor, whose threads the interpreter
    joins at exit: a process stopped with a scan hung in a read (a silent warehouse, a hung
    network file system) stayed until the read ended, 30 s here."""
    code = textwrap.dedent(
        """
        import asyncio, time
        import featurestore.jobs
        from featurestore.config import Config
        from featurestore.definitions.snapshot import new_snapshot
        from featurestore.model import BatchSource, DType, Entity, Feature, FeatureView, make_definitions
        from featurestore.plan import ServingState
        from featurestore.quality.schedule import ConsistencySchedule

        class Hung:
            def describe(self): return "hung"
            async def latest_batches(self, *a, **k):
                await asyncio.to_thread(time.sleep, 30)
                yield None

        class NoMarks:
            async def watermark(self, name): return None
            async def close(self): pass

        U = Entity("user_id", DType.INT64)
        view = FeatureView("v", (U,), (Feature("s", DType.FLOAT64),), batch_source=BatchSource(path="/x"))
        state = ServingState(new_snapshot(make_definitions("p", [U], [view], []), 1), {"v": 0})
        config = Config.model_validate({"quality": {"consistency": {"views": ["v"], "timeout_seconds": 0.5}}})
        featurestore.jobs.default_source = lambda *a: Hung()
        schedule = ConsistencySchedule(config, {"default": object()}, lambda: state, NoMarks())
        print(asyncio.run(schedule.check_view("v")), flush=True)
        import threading
        assert any(t.name == "consistency-scan:v" for t in threading.enumerate())  # hung in its read
        print(time.monotonic(), flush=True)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60, check=True
    )
    checked, checked_at = done.stdout.split()
    assert checked == "None"  # the deadline: an error
    assert time.monotonic() - float(checked_at) < 5, "the exit waited for the hung read"
