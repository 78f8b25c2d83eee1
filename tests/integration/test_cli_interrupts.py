"""`featurestore materialize` interrupted by Ctrl-C (review s57 cli finding 1): SIGINT
stops the run before it publishes, as SIGTERM does, whatever moment it lands at. Before
the fix about half the SIGINTs were lost: asyncio.run's handler cancels the task, and
redis-py's ``asyncio.wait_for`` around each socket write (Python 3.11, gh-86296) returns
normally when that cancel lands while the task builds or sends a batch; the run went on
to publish and exit 0.

And a command whose output's reader has gone (`featurestore join ... | head`: review s57
client finding 6) exits quietly, as a Unix tool that SIGPIPE ends: it blamed the server
(`error: UNAVAILABLE: [Errno 32] Broken pipe`, exit 2)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from tests.integration.test_materialize import write_source
from tests.servers import RedisServer
from tests.support import ROOT, ServerProcess

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


def _reader_gone(*args: str) -> tuple[int, str]:
    """Run the CLI with stdout a pipe nothing reads any more (``| head`` that has its
    lines), from before the command writes: exit code and stderr."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        run = subprocess.run(
            [sys.executable, "-m", "featurestore.cli", *args],
            stdout=write_end, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True, timeout=60, cwd=ROOT,
        )  # fmt: skip
    finally:
        os.close(write_end)
    return run.returncode, run.stderr


@pytest.mark.parametrize("output", ["table", "json", "grpc"])
def test_join_into_a_pipe_whose_reader_has_gone_exits_quietly_as_sigpipe_would(
    server: ServerProcess, output: str
) -> None:
    where = ["--grpc", server.grpc_target] if output == "grpc" else ["--url", server.url]
    args = [
        "join",
        *where,
        "--entity",
        "user_id=" + ",".join(map(str, range(1, 501))),
        "--service",
        "ranker_v1",
    ]
    assert _reader_gone(*args, *(["--json"] if output == "json" else [])) == (141, "")


def test_registry_show_and_validate_into_a_pipe_whose_reader_has_gone_exit_quietly(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(
        f"registry: {{path: {tmp_path / 'reg'}}}\nderived: {{cache_dir: {tmp_path / 'kernels'}}}\n"
    )
    features = str(ROOT / "featurestore" / "demo" / "features.yaml")
    applied = subprocess.run(
        [sys.executable, "-m", "featurestore.cli", "apply", features, "--config", str(config)],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
    )  # fmt: skip
    assert applied.returncode == 0, applied.stderr
    assert _reader_gone("registry", "show", "--config", str(config)) == (141, "")
    assert _reader_gone("registry", "history", "--config", str(config)) == (141, "")
    assert _reader_gone("validate", features) == (141, "")
