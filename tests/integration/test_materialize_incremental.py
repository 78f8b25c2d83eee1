"""Materialization beyond one file: event-time ranges, incremental runs against the
watermark (upserts into the current data version), a full run racing an incremental one,
and the CLI: default batch sources, --all, --incremental, a progress bar on a terminal."""

from __future__ import annotations

import fcntl
import logging
import os
import pty
import shutil
import struct
import subprocess
import sys
import termios
import uuid
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from featurestore.errors import Conflict, Unavailable
from featurestore.materialize import Materializer
from featurestore.offline import EVERYTHING, EventTimeRange, ParquetOfflineSource, ScanCounts
from featurestore.registry.base import Watermark
from featurestore.registry.file import FileRegistry
from featurestore.sources.redis import RedisSource
from tests.integration.test_materialize import TS0, read, setup
from tests.servers import RedisServer
from tests.support import ROOT

__all__ = ["setup"]  # the fixture, imported for this module's tests

Setup = tuple[FileRegistry, RedisSource]


def part(path: Path, rows: dict[int, tuple[int, int]]) -> Path:
    """A Parquet part: user -> (score, event time offset from TS0 in µs)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ids = sorted(rows)
    pq.write_table(
        pa.table(
            {
                "user_id": pa.array(ids, pa.int64()),
                "score": pa.array([rows[i][0] for i in ids], pa.int64()),
                "tag": pa.array([f"s{rows[i][0]}" for i in ids]),
                "event_timestamp": pa.array([TS0 + rows[i][1] for i in ids], pa.timestamp("us", tz="UTC")),
            }
        ),
        path,
    )
    return path


async def scores(store: RedisSource, ids: list[int], version: int) -> list[int | None]:
    res = await read(store, ids, version)
    return [v if found else None for v, found in zip(res.columns[0], res.found, strict=True)]


async def test_an_incremental_run_upserts_only_rows_newer_than_the_watermark_into_the_current_version(
    setup: Setup, tmp_path: Path
) -> None:
    registry, store = setup
    job = Materializer(registry, store)
    parts = tmp_path / "parts"
    part(parts / "day1.parquet", {1: (10, 100), 2: (20, 200), 3: (30, 300)})
    full = await job.run("scores", ParquetOfflineSource(str(parts)))
    assert (full.data_version, full.watermark_us, full.incremental) == (1, TS0 + 300, False)
    assert await registry.watermark("scores") == Watermark(1, TS0 + 300)

    part(parts / "day2.parquet", {2: (21, 400), 4: (40, 500), 1: (12, 250)})  # user 1's row came late
    inc = await job.run("scores", ParquetOfflineSource(str(parts)), incremental=True)
    assert (inc.incremental, inc.data_version, inc.previous_version) == (True, 1, 1)
    assert (inc.rows_read, inc.rows_written, inc.watermark_us) == (2, 2, TS0 + 500)
    assert await registry.data_versions() == {"scores": 1}  # no new version
    assert await scores(store, [1, 2, 3, 4], 1) == [10, 21, 30, 40]  # late rows wait for a full run
    assert await registry.watermark("scores") == Watermark(1, TS0 + 500)

    again = await job.run("scores", ParquetOfflineSource(str(parts)), incremental=True)
    assert (again.rows_written, again.watermark_us) == (0, TS0 + 500)
    assert await registry.watermark("scores") == Watermark(1, TS0 + 500)

    refreshed = await job.run("scores", ParquetOfflineSource(str(parts)))  # a full run takes everything
    assert refreshed.data_version == 2 and await registry.watermark("scores") == Watermark(2, TS0 + 500)
    assert await scores(store, [1, 2, 3, 4], 2) == [12, 21, 30, 40]


async def test_an_incremental_run_with_nothing_to_add_to_runs_full(setup: Setup, tmp_path: Path) -> None:
    registry, store = setup
    src = part(tmp_path / "a.parquet", {1: (10, 100)})
    first = await Materializer(registry, store).run(
        "scores", ParquetOfflineSource(str(src)), incremental=True
    )
    assert (first.incremental, first.data_version) == (False, 1)  # no data version yet
    # a watermark of another data version than the current one is stale
    await registry.set_watermark("scores", Watermark(99, TS0), expected=Watermark(1, TS0 + 100))
    second = await Materializer(registry, store).run(
        "scores", ParquetOfflineSource(str(src)), incremental=True
    )
    assert (second.incremental, second.data_version) == (False, 2)


async def test_start_and_end_bound_a_run_by_event_time(setup: Setup, tmp_path: Path) -> None:
    registry, store = setup
    src = part(tmp_path / "a.parquet", {1: (10, 100), 2: (20, 200), 3: (30, 300)})
    span = EventTimeRange(start_us=TS0 + 200, end_us=TS0 + 300)
    r = await Materializer(registry, store).run("scores", ParquetOfflineSource(str(src)), span=span)
    assert (r.rows_written, r.watermark_us) == (1, TS0 + 200)
    assert await scores(store, [1, 2, 3], 1) == [None, 20, None]


async def test_a_run_with_start_that_replaces_a_version_warns_that_older_keys_stop_being_served(
    setup: Setup, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    registry, store = setup
    src = part(tmp_path / "a.parquet", {1: (10, 100), 2: (20, 200)})
    job = Materializer(registry, store)
    with caplog.at_level(logging.WARNING, logger="featurestore.materialize"):
        await job.run("scores", ParquetOfflineSource(str(src)), span=EventTimeRange(start_us=TS0 + 150))
        assert "no longer served" not in caplog.text  # nothing replaced: the view had no version
        r = await job.run("scores", ParquetOfflineSource(str(src)), span=EventTimeRange(start_us=TS0 + 150))
    assert (r.data_version, r.previous_version) == (2, 1)
    assert "scores: data version 2 replaced 1" in caplog.text and "no longer served" in caplog.text
    assert await scores(store, [1, 2], 2) == [None, 20]  # what the warning is about


async def test_a_run_with_end_that_replaces_a_version_warns_that_newer_keys_stop_being_served(
    setup: Setup, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """--end narrowed the version as silently as --start had (review 53)."""
    registry, store = setup
    src = part(tmp_path / "a.parquet", {1: (10, 100), 2: (20, 200)})
    job = Materializer(registry, store)
    await job.run("scores", ParquetOfflineSource(str(src)))
    with caplog.at_level(logging.WARNING, logger="featurestore.materialize"):
        r = await job.run("scores", ParquetOfflineSource(str(src)), span=EventTimeRange(end_us=TS0 + 150))
    assert (r.data_version, r.previous_version) == (2, 1)
    assert "scores: data version 2 replaced 1" in caplog.text
    assert "keys whose rows are all from --end on are no longer served" in caplog.text
    assert "without --end a run loads every key" in caplog.text and "--start" not in caplog.text
    assert await scores(store, [1, 2], 2) == [10, None]  # what the warning is about


class Interrupted(ParquetOfflineSource):
    """A real Parquet source that runs ``during`` after its first batch."""

    during: object = None

    async def latest_batches(
        self,
        columns: Sequence[str],
        keys: Sequence[str],
        timestamp: str,
        batch_rows: int,
        span: EventTimeRange = EVERYTHING,
        counts: ScanCounts | None = None,
    ) -> AsyncIterator[pa.RecordBatch]:
        first = True
        async for b in super().latest_batches(columns, keys, timestamp, batch_rows, span, counts):
            yield b
            if first and self.during is not None:
                first = False
                await self.during  # type: ignore[misc]


async def test_a_full_run_published_during_an_incremental_one_wins(setup: Setup, tmp_path: Path) -> None:
    registry, store = setup
    parts = tmp_path / "parts"
    part(parts / "a.parquet", {1: (10, 100)})
    await Materializer(registry, store).run("scores", ParquetOfflineSource(str(parts)))
    part(parts / "b.parquet", {1: (11, 200), 2: (21, 300)})
    racing = Interrupted(str(parts))
    racing.during = Materializer(registry, store).run("scores", ParquetOfflineSource(str(parts)))
    # the store refuses writes into the replaced version, or the watermark swap fails
    with pytest.raises((Unavailable, Conflict), match=r"replaced|watermark"):
        await Materializer(registry, store).run("scores", racing, incremental=True, batch_rows=1)
    assert await registry.data_versions() == {"scores": 2}
    assert await registry.watermark("scores") == Watermark(2, TS0 + 300)
    assert await scores(store, [1, 2], 2) == [11, 21]


# -- the CLI -----------------------------------------------------------------------------


def cli_repo(tmp_path: Path, redis_url: str) -> tuple[Path, Path]:
    """Two views whose batch sources are a Parquet directory and a hive-partitioned one."""
    part(tmp_path / "scores" / "p1.parquet", {i: (i, i) for i in range(1, 201)})
    part(tmp_path / "more" / "day=2024-01-01" / "p.parquet", {i: (2 * i, i) for i in range(1, 101)})
    defs = tmp_path / "defs.yaml"
    defs.write_text(
        "project: p\nentities: [{name: user_id, dtype: int64}]\nfeature_views:\n"
        "  - {name: scores, entities: [user_id], batch_source: {path: scores},\n"
        "     features: [{name: score, dtype: int64}, {name: tag, dtype: string}]}\n"
        "  - {name: more, entities: [user_id], batch_source: {path: more},\n"
        "     features: [{name: score, dtype: int64}, {name: tag, dtype: string}]}\n"
    )
    config = tmp_path / "c.yaml"
    project = f"p{uuid.uuid4().hex[:8]}"  # its own keys on the shared Redis
    defs.write_text(defs.read_text().replace("project: p\n", f"project: {project}\n"))
    config.write_text(
        f"project: {project}\nregistry: {{path: {tmp_path / 'reg'}}}\n"
        f"stores: {{default: {{kind: redis, url: '{redis_url}'}}}}\n"
    )
    return defs, config


def materialize(config: Path, defs: Path, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [
        sys.executable,
        "-m",
        "featurestore.cli",
        "materialize",
        "--config",
        str(config),
        "--definitions",
        str(defs),
    ]
    return subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=120, cwd=ROOT)


def test_cli_materializes_every_view_from_its_batch_source_then_incrementally(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    defs, config = cli_repo(tmp_path, redis_server.url)
    out = materialize(config, defs, "--all")
    assert out.returncode == 0, out.stderr
    assert "more: published data version 1 (was 0): 100 rows written" in out.stdout
    assert "scores: published data version 1 (was 0): 200 rows written" in out.stdout
    assert "materializing from file://" in out.stderr  # not a terminal: progress as log lines
    part(tmp_path / "scores" / "p2.parquet", {5: (500, 1_000), 999: (999, 2_000)})
    inc = materialize(config, defs, "--view", "scores", "--incremental")
    assert inc.returncode == 0, inc.stderr
    assert "scores: incremental: 2 rows upserted into data version 1" in inc.stdout
    assert "watermark 2024-01-01T00:00:00.002000Z" in inc.stdout
    ranged = materialize(config, defs, "--view", "more", "--start", "2024-01-01T00:00:00.000050Z")
    assert (
        ranged.returncode == 0 and "more: published data version 2 (was 1): 51 rows written" in ranged.stdout
    )
    bad = materialize(config, defs, "--view", "more", "--end", "yesterday")
    assert bad.returncode == 2 and "--end 'yesterday'" in bad.stderr


def test_cli_all_skips_the_views_a_run_cannot_load_saying_why_and_loads_the_others(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """--all failed at the first stream view, memory-store view or view without a batch
    source, leaving later views unloaded (review 53)."""
    defs, config = cli_repo(tmp_path, redis_server.url)
    config.write_text(config.read_text().replace("stores: {", "stores: {mem: {kind: memory}, "))
    defs.write_text(
        defs.read_text()
        + "  - {name: a_mem, entities: [user_id], online_store: mem, batch_source: {path: scores},\n"
        "     features: [{name: score, dtype: int64}]}\n"
        "  - {name: b_bare, entities: [user_id], features: [{name: score, dtype: int64}]}\n"
        "stream_views:\n  - {name: m_clicks, entities: [user_id], source: {topic: clicks},\n"
        "     aggregations: [{name: n_5m, function: count, window: 5m}]}\n"
    )
    out = materialize(config, defs, "--all", "--quiet")
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[:3] == [
        "a_mem: skipped: its store 'mem' (memory) keeps no data versions",
        "b_bare: skipped: it declares no batch_source",
        "m_clicks: skipped: a stream view (`featurestore stream run` feeds it from Kafka)",
    ]
    assert "more: published data version 1 (was 0): 100 rows written" in out.stdout
    assert "scores: published data version 1 (was 0): 200 rows written" in out.stdout  # sorts after m_clicks
    defs.write_text(
        defs.read_text().replace(
            "stream_views:",
            "  - {name: z_lost, entities: [user_id], online_store: gone, batch_source: {path: scores},\n"
            "     features: [{name: score, dtype: int64}]}\nstream_views:",
        )
    )
    lacking = materialize(config, defs, "--all", "--quiet")  # a config error fails the run before any load
    assert lacking.returncode == 2 and "'z_lost' uses store 'gone', which the config lacks" in lacking.stderr
    assert "published" not in lacking.stdout  # not more's and scores' version 2, then the error


def test_cli_prints_each_views_line_when_it_is_published_not_after_every_view(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """A later view's failure left the views published before it without their line."""
    defs, config = cli_repo(tmp_path, redis_server.url)
    shutil.rmtree(tmp_path / "scores")
    part(tmp_path / "scores" / "p1.parquet", {1: (1, 1)}).with_name("README").write_text("not Parquet")
    out = materialize(config, defs, "--view", "more", "--view", "scores", "--quiet")
    assert out.returncode == 2 and "cannot read Parquet" in out.stderr, out.stderr
    assert "more: published data version 1 (was 0): 100 rows written" in out.stdout


def test_cli_progress_is_a_bar_on_a_terminal(redis_server: RedisServer, tmp_path: Path) -> None:
    defs, config = cli_repo(tmp_path, redis_server.url)
    controller, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))  # a 120-column terminal
    cmd = [
        sys.executable,
        "-m",
        "featurestore.cli",
        "materialize",
        "--config",
        str(config),
        "--definitions",
        str(defs),
    ]
    proc = subprocess.run(
        [*cmd, "--view", "scores"], stdout=subprocess.PIPE, stderr=terminal, text=True, timeout=120, cwd=ROOT
    )
    os.close(terminal)
    screen = b""
    while True:
        try:
            chunk = os.read(controller, 65536)
        except OSError:  # EIO: the terminal side is closed and drained
            break
        if not chunk:
            break
        screen += chunk
    os.close(controller)
    assert proc.returncode == 0, screen
    text = screen.decode(errors="replace")
    assert "scores: 100%|" in text and "200/200" in text and "rows/s" in text
