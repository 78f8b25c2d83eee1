"""`featurestore materialize` as a process (review s55): SIGTERM stops a run cleanly
instead of killing it (finding 1), and its summary says how many rows it read as well
as wrote (finding 7). A Redis of the test's own: the keys counted are this test's."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import redis

from tests.integration.test_materialize import TS0, write_cli_repo, write_source
from tests.servers import RedisServer
from tests.support import ROOT


def materialize(config: Path, defs: Path, source: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "featurestore.cli", "materialize", "--config", str(config),
            "--definitions", str(defs), "--view", "scores", "--source", str(source), "--quiet", *extra]  # fmt: skip


def test_sigterm_during_a_run_drops_its_rows_and_exits_143_with_one_line(
    own_redis: RedisServer, tmp_path: Path
) -> None:
    """Without a handler SIGTERM (`timeout`, `docker stop`, a Kubernetes deadline) was
    kill -9: the rows written stayed for the next publication to find."""
    defs, config = write_cli_repo(tmp_path, own_redis.url)
    small = write_source(tmp_path / "small.parquet", [1, 2, 3], 1)
    first = subprocess.run(
        materialize(config, defs, small), capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert first.returncode == 0, first.stderr
    big = write_source(tmp_path / "big.parquet", list(range(1, 400_001)), 2)
    client = redis.Redis.from_url(own_redis.url)
    try:
        before = client.dbsize()
        run = subprocess.Popen(
            materialize(config, defs, big, "--batch-rows", "2000"),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
        )  # fmt: skip
        deadline = time.monotonic() + 60
        # (DBSIZE, not a SCAN of the rows: a scan per poll let the run publish first)
        while client.dbsize() < before + 4000:
            assert run.poll() is None and time.monotonic() < deadline, "the run never wrote version 2"
            time.sleep(0.05)
        run.send_signal(signal.SIGTERM)
        out, err = run.communicate(timeout=60)
        assert run.returncode == 143, err
        lines = err.strip().splitlines()
        assert "Traceback" not in err and lines[-1].startswith("error: CANCELLED: stopped by SIGTERM"), err
        assert "published" not in out
        assert (tmp_path / "reg" / "p" / "data" / "scores" / "current").read_text().strip() == "1"
        assert list(client.scan_iter(match="fs:p:scores:v2*")) == []  # its rows and marker dropped
        assert client.exists("fs:p:scores:v1:3") and client.ttl("fs:p:scores:v1:3") == -1  # still served
    finally:
        client.close()


def test_the_summary_counts_the_rows_read_apart_from_the_rows_written(
    own_redis: RedisServer, tmp_path: Path
) -> None:
    """Ten keys, three rows each: it said `10 rows written from 10 read`."""
    defs, config = write_cli_repo(tmp_path, own_redis.url)
    ids = [k for k in range(1, 11) for _ in range(3)]
    pq.write_table(
        pa.table(
            {
                "user_id": pa.array(ids, pa.int64()),
                "score": pa.array(range(30), pa.int64()),
                "tag": ["t"] * 30,
                "event_timestamp": pa.array([TS0 + i for i in range(30)], pa.timestamp("us", tz="UTC")),
            }
        ),
        tmp_path / "dups.parquet",
    )
    out = subprocess.run(
        materialize(config, defs, tmp_path / "dups.parquet"),
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr
    assert "scores: published data version 1 (was 0): 10 rows written from 30 read" in out.stdout
