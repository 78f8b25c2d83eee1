"""Materialization into a real Redis with the file registry: versions, dedupe,
interruption, idempotent re-runs, progress, the CLI."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from featurestore.errors import Conflict, FailedPrecondition, InvalidArgument, Unavailable
from featurestore.materialize import Materializer, MaterializeResult, Progress
from featurestore.model import DType, Entity, Feature, FeatureView, make_definitions
from featurestore.offline import EVERYTHING, EventTimeRange, ParquetOfflineSource, ScanCounts
from featurestore.registry.base import Watermark
from featurestore.registry.file import FileRegistry
from featurestore.sources.base import ViewQuery, ViewRead
from featurestore.sources.memory import MemorySource
from featurestore.sources.redis import RedisOptions, RedisSource
from tests.servers import RedisServer
from tests.support import REDIS_CONNECT_MS, ROOT

U = Entity("user_id", DType.INT64)
V = FeatureView(
    "scores", (U,), (Feature("score", DType.INT64), Feature("tag", DType.STRING)), online_store="default"
)
TS0 = 1_704_067_200_000_000


def write_source(path: Path, ids: list[int], mark: int, ts_offset: int = 0) -> Path:
    pq.write_table(
        pa.table(
            {
                "user_id": pa.array(ids, pa.int64()),
                "score": pa.array([i * 10 + mark for i in ids], pa.int64()),
                "tag": pa.array([f"v{mark}" for _ in ids]),
                "event_timestamp": pa.array(
                    [TS0 + ts_offset + i for i in range(len(ids))], pa.timestamp("us", tz="UTC")
                ),
            }
        ),
        path,
        row_group_size=1000,
    )
    return path


@pytest.fixture
async def setup(redis_server: RedisServer, tmp_path: Path) -> AsyncIterator[tuple[FileRegistry, RedisSource]]:
    registry = FileRegistry(tmp_path / "reg", "p")
    await registry.publish(make_definitions("p", [U], [V], []), expected_version=None)
    options = RedisOptions(url=redis_server.url, connect_timeout_ms=REDIS_CONNECT_MS)
    store = RedisSource("default", f"m{uuid.uuid4().hex[:8]}", options)
    await store.start()
    yield registry, store
    await store.close()


async def read(store: RedisSource, ids: list[int], version: int) -> ViewRead:
    [res] = await store.read([ViewQuery(V, ids, [0, 1], version)])
    assert isinstance(res, ViewRead)
    return res


async def assert_gone(store: RedisSource, version: int) -> None:
    """Nothing of the version is left, and reading it says so (not NOT_FOUND)."""
    [res] = await store.read([ViewQuery(V, [1, 5, 1500], [0, 1], version)])
    assert isinstance(res, Unavailable) and f"data version {version} is not in the store" in res.message
    assert not [k async for k in store._client.scan_iter(match=store.prefix("scores", version) + "*")]


async def test_versions_publish_and_expire(setup: tuple[FileRegistry, RedisSource], tmp_path: Path) -> None:
    registry, store = setup
    job = Materializer(registry, store, grace_seconds=60)
    seen: list[Progress] = []
    r1 = await job.run(
        "scores",
        ParquetOfflineSource(str(write_source(tmp_path / "a.parquet", list(range(1, 3001)), 1))),
        batch_rows=1000,
        on_progress=seen.append,
    )
    assert (r1.data_version, r1.previous_version, r1.rows_written) == (1, 0, 3000)
    assert (
        [p.rows for p in seen] == [1000, 2000, 3000] and seen[-1].total == 3000 and seen[-1].eta_seconds == 0
    )
    assert await registry.data_versions() == {"scores": 1}
    r2 = await job.run(
        "scores", ParquetOfflineSource(str(write_source(tmp_path / "b.parquet", list(range(1, 3001)), 2)))
    )
    assert r2.data_version == 2
    assert (await read(store, [7], 2)).columns == [[72], ["v2"]]
    assert (await read(store, [7], 1)).columns == [[71], ["v1"]]  # still there for the grace period
    ttl = store._client.ttl(f"{store.prefix('scores', 1)}7")
    assert 0 < await ttl <= 60


async def test_latest_row_per_key_wins_across_batches(
    setup: tuple[FileRegistry, RedisSource], tmp_path: Path
) -> None:
    registry, store = setup
    # key 5 appears three times in different batches; the middle row is the newest
    ids = [5, 1, 2, 5, 3, 4, 5]
    pq.write_table(
        pa.table(
            {
                "user_id": pa.array(ids, pa.int64()),
                "score": pa.array([100, 1, 2, 300, 3, 4, 200], pa.int64()),
                "tag": pa.array(["old", "a", "b", "newest", "c", "d", "mid"]),
                "event_timestamp": pa.array(
                    [TS0, TS0, TS0, TS0 + 9, TS0, TS0, TS0 + 5], pa.timestamp("us", tz="UTC")
                ),
            }
        ),
        tmp_path / "dup.parquet",
    )
    seen: list[Progress] = []
    r = await Materializer(registry, store).run(
        "scores", ParquetOfflineSource(str(tmp_path / "dup.parquet")), batch_rows=2, on_progress=seen.append
    )
    assert (r.rows_read, r.rows_written) == (7, 5)  # 7 source rows read, 5 keys' latest rows written
    # progress counts the rows loaded toward the rows to load: it ends at its total, ETA 0
    # (it stopped at 5 of 7 with an ETA left, and read was always written, review s55)
    assert seen[-1].rows == seen[-1].total == 5 and seen[-1].eta_seconds == 0
    res = await read(store, [5], 1)
    assert res.columns == [[300], ["newest"]] and res.event_ts_us == [TS0 + 9]


async def test_nanosecond_event_times_load_floored_to_the_microsecond_and_the_later_one_wins(
    setup: tuple[FileRegistry, RedisSource], tmp_path: Path
) -> None:
    """pandas and Spark write timestamp[ns]: a sub-µs part used to fail the run with a
    bare ArrowInvalid. Key 1's rows differ below a microsecond; the later one (first in
    the file) wins, and its time is the microsecond it falls in, as is the watermark."""
    registry, store = setup
    ns0 = TS0 * 1000
    pq.write_table(
        pa.table(
            {
                "user_id": pa.array([1, 2, 1], pa.int64()),
                "score": pa.array([11, 20, 10], pa.int64()),
                "tag": pa.array(["later", "b", "earlier"]),
                "event_timestamp": pa.array([ns0 + 1_999, ns0 + 5_000_001, ns0 + 1_001], pa.timestamp("ns")),
            }
        ),
        tmp_path / "ns.parquet",
    )
    r = await Materializer(registry, store).run("scores", ParquetOfflineSource(str(tmp_path / "ns.parquet")))
    assert (r.rows_read, r.rows_written, r.watermark_us) == (3, 2, TS0 + 5_000)  # 3 rows, 2 keys
    res = await read(store, [1, 2], 1)
    assert res.columns == [[11, 20], ["later", "b"]] and res.event_ts_us == [TS0 + 1, TS0 + 5_000]
    assert await registry.watermark("scores") == Watermark(1, TS0 + 5_000)


class FailingSource(ParquetOfflineSource):
    """A real Parquet source whose stream breaks after the first batch."""

    async def latest_batches(
        self,
        columns: Sequence[str],
        keys: Sequence[str],
        timestamp: str,
        batch_rows: int,
        span: EventTimeRange = EVERYTHING,
        counts: ScanCounts | None = None,
    ) -> AsyncIterator[pa.RecordBatch]:
        n = 0
        async for b in super().latest_batches(columns, keys, timestamp, batch_rows, span, counts):
            if n == 1:
                raise OSError("connection to the warehouse lost")
            n += 1
            yield b


async def test_interrupted_run_keeps_serving_and_rerun_is_idempotent(
    setup: tuple[FileRegistry, RedisSource], tmp_path: Path
) -> None:
    registry, store = setup
    job = Materializer(registry, store)
    await job.run(
        "scores", ParquetOfflineSource(str(write_source(tmp_path / "a.parquet", list(range(1, 101)), 1)))
    )
    src2 = write_source(tmp_path / "b.parquet", list(range(1, 2001)), 2)
    with pytest.raises(OSError):
        await job.run("scores", FailingSource(str(src2)), batch_rows=500)
    assert await registry.data_versions() == {"scores": 1}  # version 1 still serving
    assert (await read(store, [50], 1)).columns == [[501], ["v1"]]
    await assert_gone(store, 2)  # the failed run dropped what it had written, its marker included
    # a re-run from a smaller source: nothing of the interrupted run may show
    src3 = write_source(tmp_path / "c.parquet", list(range(1, 11)), 3)
    r = await job.run("scores", ParquetOfflineSource(str(src3)))
    assert r.data_version == 3
    res = await read(store, [5, 1500], 3)
    assert res.found == [True, False] and res.columns[0][0] == 53


async def test_concurrent_runs_never_share_a_version(
    setup: tuple[FileRegistry, RedisSource], tmp_path: Path
) -> None:
    registry, store = setup
    job = Materializer(registry, store)
    big = ParquetOfflineSource(str(write_source(tmp_path / "a.parquet", list(range(1, 2001)), 1)))
    small = ParquetOfflineSource(str(write_source(tmp_path / "b.parquet", list(range(1, 11)), 2)))
    results = await asyncio.gather(
        job.run("scores", big, batch_rows=200), job.run("scores", small), return_exceptions=True
    )
    [won] = [r for r in results if isinstance(r, MaterializeResult)]
    [lost] = [r for r in results if not isinstance(r, MaterializeResult)]
    assert isinstance(lost, Conflict), lost
    assert await registry.data_versions() == {"scores": won.data_version}
    res = await read(store, [5, 1500], won.data_version)
    mark = 1 if won.rows_written == 2000 else 2
    assert res.columns[0][0] == 50 + mark and res.found == [True, mark == 1]  # one run's rows, not a mix
    other = ({1, 2} - {won.data_version}).pop()
    await assert_gone(store, other)  # the loser cleaned up


async def test_rows_of_a_killed_run_are_dropped_by_the_next_publication(
    setup: tuple[FileRegistry, RedisSource], tmp_path: Path
) -> None:
    registry, store = setup
    path = write_source(tmp_path / "a.parquet", list(range(1, 11)), 1)
    killed = await registry.allocate_data_version("scores")  # a run killed mid-write
    await store.write(V, pq.read_table(path), killed)
    r = await Materializer(registry, store).run("scores", ParquetOfflineSource(str(path)))
    assert r.data_version == killed + 1
    await assert_gone(store, killed)


async def test_rows_another_registry_left_under_the_allocated_version_are_not_mixed_in(
    setup: tuple[FileRegistry, RedisSource], tmp_path: Path
) -> None:
    """A registry recreated over a live store hands out version numbers the store has
    seen: the stale rows there must not be served beside the new run's."""
    registry, store = setup
    await store.write(V, pq.read_table(write_source(tmp_path / "old.parquet", list(range(1, 21)), 9)), 1)
    r = await Materializer(registry, store).run(
        "scores", ParquetOfflineSource(str(write_source(tmp_path / "a.parquet", list(range(1, 11)), 1)))
    )
    assert r.data_version == 1
    res = await read(store, [5, 15], 1)
    assert res.found == [True, False] and res.columns[0][0] == 51


async def test_schema_mismatch_fails_before_publishing(
    setup: tuple[FileRegistry, RedisSource], tmp_path: Path
) -> None:
    registry, store = setup
    pq.write_table(
        pa.table(
            {
                "user_id": [1],
                "score": [1.5],
                "tag": ["x"],
                "event_timestamp": pa.array([TS0], pa.timestamp("us", tz="UTC")),
            }
        ),
        tmp_path / "bad.parquet",
    )
    with pytest.raises(InvalidArgument, match="column 'score' has type double, expected int64"):
        await Materializer(registry, store).run("scores", ParquetOfflineSource(str(tmp_path / "bad.parquet")))
    assert await registry.data_versions() == {}


async def test_memory_store_is_refused(setup: tuple[FileRegistry, RedisSource]) -> None:
    registry, _ = setup
    with pytest.raises(FailedPrecondition, match="does not keep data versions"):
        Materializer(registry, MemorySource("default"))


def write_cli_repo(tmp_path: Path, redis_url: str) -> tuple[Path, Path]:
    """Definitions with one ``scores`` view, and a server config on that Redis."""
    defs = tmp_path / "defs.yaml"
    defs.write_text(
        "project: p\nentities: [{name: user_id, dtype: int64}]\nfeature_views:\n"
        "  - {name: scores, entities: [user_id], features: [{name: score, dtype: int64}, {name: tag, dtype: string}]}\n"
    )
    config = tmp_path / "c.yaml"
    config.write_text(
        f"project: p\nregistry: {{path: {tmp_path / 'reg'}}}\nstores: {{default: {{kind: redis, url: '{redis_url}'}}}}\n"
    )
    return defs, config


def test_cli_materialize_prints_progress(redis_server: RedisServer, tmp_path: Path) -> None:
    ids = list(np.arange(1, 20_001).tolist())
    src = write_source(tmp_path / "s.parquet", ids, 4)
    defs, config = write_cli_repo(tmp_path, redis_server.url)
    cmd = [sys.executable, "-m", "featurestore.cli", "materialize", "--config", str(config), "--definitions", str(defs),
           "--view", "scores", "--source", str(src), "--batch-rows", "5000"]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert "scores: published data version 1 (was 0): 20,000 rows written" in out.stdout
    assert "rows/s" in out.stderr
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert "published data version 2 (was 1)" in again.stdout and "version 1 expires in 600s" in again.stdout
    bad = subprocess.run(
        [*cmd[:-6], "--view", "nope", "--source", str(src)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert bad.returncode == 2 and "unknown feature view 'nope'" in bad.stderr


def test_cli_materialize_applies_incompatible_definitions_only_with_force(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """`materialize --definitions FILE` applies FILE by apply's rules: incompatible changes
    (here: existing features reordered) are refused, naming --force, and nothing is
    published or written; with --force they are published, as `apply --force` does."""
    src = write_source(tmp_path / "s.parquet", [1, 2, 3], 4)
    defs, config = write_cli_repo(tmp_path, redis_server.url)

    def materialize(*extra: str) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "featurestore.cli", "materialize", "--config", str(config),
               "--definitions", str(defs), "--view", "scores", "--source", str(src), "--quiet", *extra]  # fmt: skip
        return subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=ROOT)

    first = materialize()
    assert first.returncode == 0, first.stderr
    defs.write_text(defs.read_text().replace(
        "[{name: score, dtype: int64}, {name: tag, dtype: string}]", "[{name: tag, dtype: string}, {name: score, dtype: int64}]"
    ))  # fmt: skip
    refused = materialize()
    assert refused.returncode != 0
    assert "is not applied on start: incompatible changes" in refused.stderr
    assert "pass --force to materialize" in refused.stderr
    assert "data version 2" not in refused.stdout
    forced = materialize("--force")
    assert forced.returncode == 0, forced.stderr
    assert "scores: published data version 2 (was 1): 3 rows written" in forced.stdout
    registry = FileRegistry(tmp_path / "reg", "p")
    current = asyncio.run(registry.current())
    assert current is not None and current.version == 2
    assert [f.name for f in current.definitions.views["scores"].features] == ["tag", "score"]
    no_file = subprocess.run(
        [sys.executable, "-m", "featurestore.cli", "materialize", "--config", str(config), "--all", "--force"],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
    )  # fmt: skip
    assert no_file.returncode == 2 and "--force applies definitions" in no_file.stderr


def test_cli_materialize_from_a_clickhouse_table(redis_server: RedisServer, tmp_path: Path) -> None:
    """`--source clickhouse://db.table --clickhouse-dsn chdb://DIR` end to end (the warehouse
    is built by another process: chdb opens one data dir per process)."""
    warehouse = tmp_path / "warehouse"
    build = (
        "import clickhouse_connect, sys\n"
        "c = clickhouse_connect.get_client(dsn='chdb://' + sys.argv[1])\n"
        "c.command('CREATE DATABASE wh')\n"
        "c.command(\"CREATE TABLE wh.scores (user_id Int64, score Int64, tag String, event_timestamp DateTime64(6, 'UTC')) ENGINE = MergeTree ORDER BY user_id\")\n"
        "c.command(\"INSERT INTO wh.scores SELECT number % 100, number, 'ch', toDateTime64('2024-01-01 00:00:00', 6, 'UTC') + number FROM numbers(300)\")\n"
    )
    subprocess.run([sys.executable, "-c", build, str(warehouse)], check=True, timeout=120)
    defs, config = write_cli_repo(tmp_path, redis_server.url)
    out = subprocess.run(
        [sys.executable, "-m", "featurestore.cli", "materialize", "--config", str(config), "--definitions", str(defs),
         "--view", "scores", "--source", "clickhouse://wh.scores", "--clickhouse-dsn", f"chdb://{warehouse}"],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "scores: published data version 1 (was 0): 100 rows written" in out.stdout
