"""The scheduled consistency check when what it reads misbehaves: a warehouse that never
answers, a registry that cannot be read (review s54, findings 1, 4 and 9)."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from prometheus_client import REGISTRY

import featurestore.offline
from featurestore.config import Config
from featurestore.definitions.snapshot import new_snapshot
from featurestore.model import BatchSource, DType, Entity, Feature, FeatureView, make_definitions
from featurestore.offline import ClickHouseOfflineSource
from featurestore.plan import ServingState
from featurestore.quality.schedule import ConsistencySchedule
from featurestore.registry.base import Registry, Watermark
from featurestore.sources.base import OnlineSource, ViewQuery, ViewRead

U = Entity("user_id", DType.INT64)


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.fixture
def hung_warehouse() -> Iterator[int]:
    """The port of a "ClickHouse" that accepts connections (the kernel's backlog) and never
    says a word: an overloaded warehouse, or a proxy in front of a dead one. Closing the
    listener resets the connections waiting on it, which ends any client still reading."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    try:
        yield listener.getsockname()[1]
    finally:
        listener.close()


def _warehouse_view(name: str, port: int) -> tuple[FeatureView, ServingState, Config]:
    view = FeatureView(
        name, (U,), (Feature("score", DType.FLOAT64),), batch_source=BatchSource(table="wh.users")
    )
    state = ServingState(new_snapshot(make_definitions("p", [U], [view], []), 1), {name: 0})
    config = Config.model_validate(
        {
            "stores": {
                "default": {"kind": "memory"},
                "wh": {"kind": "clickhouse", "dsn": f"http://127.0.0.1:{port}"},
            },
            "quality": {"consistency": {"views": [name], "sample": 100}},
        }
    )
    return view, state, config


class _NoWatermarks:
    async def watermark(self, name: str) -> Watermark | None:
        return None

    async def close(self) -> None:
        pass


def _schedule(config: Config, store: object, state: ServingState, registry: object) -> ConsistencySchedule:
    """A schedule over stand-ins: a store (never reached, or one that answers every key)
    and a registry (the watermark methods only)."""
    return ConsistencySchedule(
        config, {"default": cast(OnlineSource, store)}, lambda: state, cast(Registry, registry)
    )


async def _longest_stall(work: asyncio.Future[object] | asyncio.Task[object]) -> float:
    """The longest the event loop went without running a 10 ms heartbeat while ``work`` ran."""
    longest, last = 0.0, time.monotonic()
    while not work.done():
        await asyncio.sleep(0.01)
        now = time.monotonic()
        longest, last = max(longest, now - last), now
    return longest


async def test_the_loop_keeps_serving_while_a_scheduled_check_waits_on_a_warehouse_that_never_answers(
    hung_warehouse: int,
) -> None:
    """Opening the ClickHouse source ran on the serving loop and blocked it for the
    client's 300 s read timeout; now the check errs at its deadline, counted, and the loop
    never stalls meanwhile."""
    _, state, config = _warehouse_view("hung", hung_warehouse)
    schedule = _schedule(config, object(), state, _NoWatermarks())
    schedule.deadline_seconds = 1.0
    errors = sample("featurestore_consistency_checks_total", view="hung", outcome="error")

    started = time.monotonic()
    check = asyncio.ensure_future(schedule.check_view("hung"))
    stall = await _longest_stall(check)

    assert await check is None
    assert time.monotonic() - started < 5
    assert stall < 0.5, f"the serving loop stalled {stall:.1f} s"
    assert sample("featurestore_consistency_checks_total", view="hung", outcome="error") == errors + 1


def test_a_clickhouse_offline_source_gives_up_on_a_silent_warehouse_within_its_timeouts(
    hung_warehouse: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """clickhouse-connect's defaults wait 300 s for an answer; the source bounds it."""
    monkeypatch.setattr(featurestore.offline, "RECEIVE_TIMEOUT_SECONDS", 1)
    started = time.monotonic()
    with pytest.raises(Exception):  # noqa: B017 - whichever error the client raises, it raises soon
        ClickHouseOfflineSource(f"http://127.0.0.1:{hung_warehouse}", "wh.users")
    assert time.monotonic() - started < 10


def test_a_stopping_server_does_not_wait_for_a_hung_scan_of_the_batch_source(hung_warehouse: int) -> None:
    """A scan on asyncio's default executor kept the process until the scan ended:
    ``asyncio.Runner`` waits for that executor on close (review s54, finding 9)."""
    _, state, config = _warehouse_view("stopping", hung_warehouse)
    schedule = _schedule(config, object(), state, _NoWatermarks())

    async def serve_then_stop() -> None:
        task = asyncio.create_task(schedule.check_view("stopping"))
        await asyncio.sleep(0.3)  # the scan is waiting on the warehouse
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    started = time.monotonic()
    with asyncio.Runner() as runner:
        runner.run(serve_then_stop())
    assert time.monotonic() - started < 3


def test_a_second_check_of_a_view_whose_scan_still_hangs_is_an_error_not_a_second_thread(
    hung_warehouse: int,
) -> None:
    _, state, config = _warehouse_view("twice", hung_warehouse)
    schedule = _schedule(config, object(), state, _NoWatermarks())
    schedule.deadline_seconds = 0.3

    async def two_rounds() -> None:
        assert await schedule.check_view("twice") is None  # the deadline
        assert await schedule.check_view("twice") is None  # the first scan is still waiting

    errors = sample("featurestore_consistency_checks_total", view="twice", outcome="error")
    asyncio.run(two_rounds())
    assert sample("featurestore_consistency_checks_total", view="twice", outcome="error") == errors + 2
    assert len(schedule._scans) == 1


class _Store:
    """Data version 1 exactly as materialized: every key at event time 1,000,000."""

    async def read(self, queries: list[ViewQuery]) -> list[ViewRead]:
        q = queries[0]
        n = len(q.keys)
        return [ViewRead([True] * n, [1_000_000] * n, [[float(k) for k in q.keys]])]  # type: ignore[arg-type]


class _Registry:
    def __init__(self) -> None:
        self.down = False

    async def watermark(self, name: str) -> Watermark | None:
        if self.down:
            raise ConnectionError("etcd: connection refused")
        return Watermark(1, 1_000_000)

    async def close(self) -> None:
        pass


async def test_a_registry_that_cannot_be_read_makes_the_check_an_error_not_a_skew(tmp_path: Path) -> None:
    """Checked without the watermark, the rows added since the served version were stale
    and FeatureSkew paged for a registry blip (review s54, finding 4)."""
    n, path = 1000, tmp_path / "src.parquet"
    ts = np.full(n, 1_000_000)
    ts[::10] = 2_000_000  # rows added since the materialization: pending with the watermark
    pq.write_table(
        pa.table(
            {
                "user_id": pa.array(np.arange(n), pa.int64()),
                "score": pa.array(np.arange(n, dtype=np.float64)),
                "event_timestamp": pa.array(ts, pa.timestamp("us", tz="UTC")),
            }
        ),
        path,
    )
    view = FeatureView(
        "regdown", (U,), (Feature("score", DType.FLOAT64),), batch_source=BatchSource(path=str(path))
    )
    state = ServingState(new_snapshot(make_definitions("p", [U], [view], []), 1), {"regdown": 1})
    config = Config.model_validate({"quality": {"consistency": {"views": ["regdown"], "sample": 200}}})
    registry = _Registry()
    schedule = _schedule(config, _Store(), state, registry)
    schedule.settle_seconds = 0.01

    report = await schedule.check_view("regdown")
    assert report is not None and report.counts["pending"] > 0 and report.mismatches == 0
    assert sample("featurestore_consistency_failed", view="regdown") == 0

    registry.down = True
    assert await schedule.check_view("regdown") is None
    assert sample("featurestore_consistency_failed", view="regdown") == 0  # as it was
    assert sample("featurestore_consistency_checks_total", view="regdown", outcome="error") == 1
    assert sample("featurestore_consistency_checks_total", view="regdown", outcome="mismatch") == 0
