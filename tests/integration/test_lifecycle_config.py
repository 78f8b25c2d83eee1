"""`featurestore serve` refuses, before any worker starts, what would fail in every one:
several workers with an embedded ClickHouse store (each would open its one data
directory, all but the first finding it locked: review s55), and a number past what
grpc or the OS takes (an OverflowError traceback and exit 1 after the stores loaded,
and under the supervisor workers restarted for ever). One line naming the setting, exit 2."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from featurestore.errors import FailedPrecondition
from featurestore.sources.clickhouse import ClickHouseOptions, check_embedded_workers
from tests.harness import with_parent_death_signal
from tests.support import free_port

GUARD = 30.0  # seconds; only turns a hang (a server that started after all) into a failure


def serve(config: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    argv = [
        sys.executable, "-m", "featurestore.cli", "serve", "--config", str(config),
        "--http-port", str(free_port()), "--grpc-port", str(free_port()), *args,
    ]  # fmt: skip
    return subprocess.run(
        with_parent_death_signal(argv),
        capture_output=True,
        text=True,
        timeout=GUARD,
        env={**os.environ, **(env or {})},
    )


def one_error_line(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and "restarting" not in done.stderr, done.stderr
    [line] = [line for line in done.stderr.splitlines() if line.strip()]
    return line


def test_two_workers_with_an_embedded_clickhouse_store_are_refused_before_any_starts(
    tmp_path: Path, test_repo: Path
) -> None:
    data = tmp_path / "clickhouse"
    config = tmp_path / "config.yaml"
    config.write_text(
        f"registry: {{path: {tmp_path / 'registry'}}}\nworkers: 2\n"
        f"stores: {{default: {{kind: memory}}, local: {{kind: clickhouse, dsn: 'chdb://{data}'}}}}\n"
    )
    line = one_error_line(serve(config, "--definitions", str(test_repo)))
    with pytest.raises(FailedPrecondition) as documented:  # what a store says when it opens
        check_embedded_workers(ClickHouseOptions(dsn=f"chdb://{data}"), 2)
    assert line == (
        f"error: INVALID_ARGUMENT: {config}: workers: 2 with stores.local (chdb://): {documented.value.message}"
    )
    assert not data.exists()  # no worker opened it


@pytest.mark.parametrize(
    ("variable", "value", "setting", "maximum", "workers"),
    [
        ("FEATURESTORE_GRPC__MAX_CONNECTION_AGE_SECONDS", "3000000", "grpc.max_connection_age_seconds",
         "2147483.647 seconds (24.8 days)", "1"),
        ("FEATURESTORE_LIMITS__MAX_BODY_BYTES", "4294967296", "limits.max_body_bytes", "2147483647", "1"),
        ("FEATURESTORE_GRPC__MAX_CONCURRENT_STREAMS", "3000000000", "grpc.max_concurrent_streams",
         "2147483647", "2"),
        ("FEATURESTORE_HTTP__BACKLOG", "3000000000", "http.backlog", "65535", "2"),
    ],
)  # fmt: skip
def test_a_number_past_what_grpc_or_the_os_takes_is_refused_naming_the_setting_and_its_maximum(
    tmp_path: Path, test_repo: Path, variable: str, value: str, setting: str, maximum: str, workers: str
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(
        f"registry: {{path: {tmp_path / 'registry'}}}\nstores: {{default: {{kind: memory}}, local: {{kind: memory}}}}\n"
    )
    began = time.monotonic()
    done = serve(config, "--definitions", str(test_repo), "--workers", workers, env={variable: value})
    line = one_error_line(done)
    assert line.startswith(
        f"error: INVALID_ARGUMENT: {config}: {variable} ({setting}): expected at most {maximum}, got "
    )
    assert time.monotonic() - began < GUARD
