"""`featurestore materialize` interrupted by Ctrl-C (review s57 cli finding 1): SIGINT
stops the run before it publishes, as SIGTERM does, whatever moment it lands at. Before
the fix about half the SIGINTs were lost: asyncio.run's handler cancels the task, and
redis-py's ``asyncio.wait_for`` around each socket write (Python 3.11, gh-86296) returns
normally when that cancel lands while the task builds or sends a batch; the run went on
to publish and exit 0."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import redis

from tests.integration.test_materialize import write_source
from tests.servers import RedisServer
from tests.support import ROOT

RUNS = 8  # one SIGINT each, at its own moment: the old code lost about 1 in 2
AT_ONCE = 2  # runs side by side (2 cores: more made the old code lose fewer)


def _repo(root: Path, project: str, redis_url: str) -> tuple[Path, Path]:
    """Definitions and a config of one project (its own registry and Redis keys)."""
    root.mkdir()
    defs = root / "defs.yaml"
    defs.write_text(
        f"project: {project}\nentities: [{{name: user_id, dtype: int64}}]\nfeature_views:\n"
        "  - {name: scores, entities: [user_id], features: [{name: score, dtype: int64}, {name: tag, dtype: string}]}\n"
    )
    config = root / "c.yaml"
    config.write_text(
        f"project: {project}\nregistry: {{path: {root / 'reg'}}}\n"
        f"stores: {{default: {{kind: redis, url: '{redis_url}'}}}}\n"
    )
    return defs, config


def _materialize(defs: Path, config: Path, source: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "featurestore.cli", "materialize", "--config", str(config),
         "--definitions", str(defs), "--view", "scores", "--source", str(source), "--batch-rows", "5000"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
        # SIGINT as a terminal's Ctrl-C finds it (a background job of a shell ignores it)
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip


def _interrupt(run: subprocess.Popen[str], delay: float) -> None:
    """SIGINT ``delay`` seconds into the run's load."""
    assert run.stderr is not None
    for line in run.stderr:  # (log lines on a pipe) its first batch is written
        if "rows/s" in line:
            break
    else:
        raise AssertionError(f"the run never began its load: exit {run.wait()}")
    time.sleep(delay)
    run.send_signal(signal.SIGINT)


def test_ctrl_c_at_any_moment_of_a_materialization_stops_it_before_it_publishes(
    own_redis: RedisServer, tmp_path: Path
) -> None:
    source = write_source(tmp_path / "big.parquet", list(range(1, 200_001)), 2)
    repos = [_repo(tmp_path / f"r{i}", f"p{i}", own_redis.url) for i in range(RUNS)]
    outcomes: list[tuple[int, str, str]] = []
    for first in range(0, RUNS, AT_ONCE):
        runs = [_materialize(defs, config, source) for defs, config in repos[first : first + AT_ONCE]]
        try:
            for i, run in enumerate(runs, first):
                _interrupt(run, 0.1 * i)
            outcomes += [(run.wait(timeout=60), *run.communicate()) for run in runs]
        finally:
            for run in runs:
                if run.poll() is None:
                    run.kill()
                    run.wait()
    client = redis.Redis.from_url(own_redis.url)
    try:
        seen = [
            (
                code,
                "published" in out,
                (tmp_path / f"r{i}" / "reg" / f"p{i}" / "data" / "scores" / "current").exists(),
                len(list(client.scan_iter(match=f"fs:p{i}:scores:*", count=10_000))),  # its rows dropped
            )
            for i, (code, out, _) in enumerate(outcomes)
        ]
    finally:
        client.close()
    # (exit code, summary printed, a version published, keys of the project left in Redis)
    assert seen == [(130, False, False, 0)] * RUNS, (
        seen,
        [e.strip().splitlines()[-1:] for _, _, e in outcomes],
    )
    for _, _, err in outcomes:
        assert err.strip().splitlines()[-1].startswith("error: CANCELLED: stopped by SIGINT"), err
