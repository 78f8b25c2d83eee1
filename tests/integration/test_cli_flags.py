"""Flags the CLI takes values from are checked, and their errors name them (review s57,
cli findings 2, 6 and 11): a numeric flag out of range is argparse's usage error (exit
2, the flag named) before the command reads its config or opens a connection; an
unknown log level (finding 4) is one line naming where it came from."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import ROOT


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "featurestore.cli", *args],
        capture_output=True, text=True, timeout=60, cwd=ROOT, stdin=subprocess.DEVNULL,
        env={**os.environ, **(env or {})},
    )  # fmt: skip


def usage_error(out: subprocess.CompletedProcess[str]) -> str:
    """argparse's error line (after its usage line)."""
    assert out.returncode == 2, out
    assert "Traceback" not in out.stderr and out.stdout == "", out
    return out.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize("value", ["0", "-5", "1000001", "many"])
def test_lineage_consume_refuses_a_batch_size_kafka_cannot_take(value: str) -> None:
    """0 consumed nothing and spun a core for ever; -5 and 1000001 raised librdkafka's
    ValueError as a traceback once the graph was up."""
    line = usage_error(cli("lineage", "consume", "--batch-size", value))
    assert line == (
        f"featurestore lineage consume: error: argument --batch-size: expected an integer from 1 to 1000000, "
        f"got {value!r}"
    )


@pytest.mark.parametrize("value", ["99999", "65536", "-1", "x"])
@pytest.mark.parametrize("command", [["lineage", "consume"], ["stream", "run", "--view", "v"]])
def test_a_metrics_port_out_of_range_is_refused_naming_the_flag(command: list[str], value: str) -> None:
    """99999 was OverflowError's traceback, -1 `UNAVAILABLE: [Errno -8] Servname not supported`."""
    line = usage_error(cli(*command, "--metrics-port", value))
    assert line.endswith(
        f"error: argument --metrics-port: expected a port from 0 to 65535 (0: off), got {value!r}"
    )


@pytest.mark.parametrize("flag", ["--http-port", "--grpc-port"])
@pytest.mark.parametrize("value", ["0", "65536", "-1"])
def test_a_serve_port_out_of_range_is_refused_naming_the_flag(flag: str, value: str) -> None:
    line = usage_error(cli("serve", flag, value))
    assert (
        line == f"featurestore serve: error: argument {flag}: expected a port from 1 to 65535, got {value!r}"
    )


@pytest.mark.parametrize("value", ["nan", "inf", "-1", "-inf", "soon"])
def test_produce_sample_refuses_seconds_that_are_not_a_finite_number_from_0(value: str) -> None:
    """nan produced 0 events and exited 0."""
    line = usage_error(cli("stream", "produce-sample", f"--seconds={value}"))  # (-inf alone reads as a flag)
    assert line == (
        "featurestore stream produce-sample: error: argument --seconds: expected a number of seconds, "
        f"0 or more, got {value!r}"
    )


def _metrics_commands(tmp_path: Path) -> dict[str, list[str]]:
    """lineage consume and stream run, each with a config that gets them to their metrics
    listener (their backends, unreachable, are not reached before it)."""
    (tmp_path / "lin.yaml").write_text("lineage: {graph: bolt, bolt: {uri: 'bolt://127.0.0.1:1'}}\n")
    (tmp_path / "sk.yaml").write_text(
        "stores: {default: {kind: redis, url: 'redis://127.0.0.1:1/0'}}\n"
        "stream: {kafka: {bootstrap_servers: '127.0.0.1:1'}}\n"
    )
    (tmp_path / "defs.yaml").write_text(
        "project: demo\nentities: [{name: user_id, dtype: int64}]\nstream_views:\n"
        "  - {name: clicks, entities: [user_id], source: {topic: clicks},\n"
        "     aggregations: [{name: n_5m, function: count, window: 5m}]}\n"
    )
    return {
        "lineage": ["lineage", "consume", "--config", str(tmp_path / "lin.yaml")],
        "stream": ["stream", "run", "--config", str(tmp_path / "sk.yaml"),
                   "--definitions", str(tmp_path / "defs.yaml"), "--view", "clicks"],
    }  # fmt: skip


@pytest.mark.parametrize("command", ["lineage", "stream"])
def test_a_metrics_port_in_use_is_one_line_naming_the_flags_and_the_port(
    command: str, tmp_path: Path
) -> None:
    """It was `FAILED_PRECONDITION: [Errno 98] Address already in use`, naming neither."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        out = cli(*_metrics_commands(tmp_path)[command], "--metrics-port", str(port))
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert out.stderr.strip().splitlines()[-1] == (
        f"error: FAILED_PRECONDITION: --metrics-host 127.0.0.1 --metrics-port {port}: "
        f"cannot listen on 127.0.0.1:{port}: Address already in use"
    )


LEVELS = "use debug, info, warning, error, critical"


@pytest.mark.parametrize("command", [["serve"], ["lineage", "consume"], ["stream", "run", "--view", "v"]])
def test_an_unknown_log_level_flag_is_one_line_naming_the_flag_the_value_and_the_levels(
    command: list[str],
) -> None:
    """It was logging's `ValueError: Unknown level: 'LOUD'` traceback, exit 1."""
    out = cli(*command, "--log-level", "loud")
    assert (out.returncode, out.stdout) == (2, ""), out
    assert out.stderr == f"error: INVALID_ARGUMENT: --log-level 'loud': unknown log level; {LEVELS}\n"


@pytest.mark.parametrize("command", ["validate", "registry", "join"])
def test_an_unknown_log_level_in_the_environment_is_one_line_for_every_command(
    command: str, tmp_path: Path
) -> None:
    """A typo in a deployment's FEATURESTORE_LOG_LEVEL made every command (those without
    a config too) a traceback with exit 1."""
    (tmp_path / "c.yaml").write_text(f"registry: {{path: {tmp_path / 'reg'}}}\n")
    args = {
        "validate": ["validate", str(ROOT / "featurestore" / "demo" / "features.yaml")],
        "registry": ["registry", "history", "--config", str(tmp_path / "c.yaml")],
        "join": ["join", "--url", "http://127.0.0.1:1", "--entity", "user_id=1", "--features", "v:f"],
    }[command]
    out = cli(*args, env={"FEATURESTORE_LOG_LEVEL": "Loud"})
    assert (out.returncode, out.stdout) == (2, ""), out
    assert (
        out.stderr == f"error: INVALID_ARGUMENT: FEATURESTORE_LOG_LEVEL 'Loud': unknown log level; {LEVELS}\n"
    )


def test_a_known_log_level_in_the_environment_is_taken_in_any_case_and_with_spaces() -> None:
    out = cli(
        "validate",
        str(ROOT / "featurestore" / "demo" / "features.yaml"),
        env={"FEATURESTORE_LOG_LEVEL": " Warning "},
    )
    assert out.returncode == 0 and out.stderr == "", out


def test_the_healthcheck_with_an_unknown_log_level_in_the_environment_exits_1_not_dockers_reserved_2() -> (
    None
):
    out = cli("healthcheck", "--url", "http://127.0.0.1:1/readyz", env={"FEATURESTORE_LOG_LEVEL": "loud"})
    assert out.returncode == 1 and "FEATURESTORE_LOG_LEVEL 'loud': unknown log level" in out.stderr, out


def _serve_config(tmp_path: Path) -> Path:
    config = tmp_path / "c.yaml"
    config.write_text(
        f"registry: {{path: {tmp_path / 'reg'}}}\nstores: {{default: {{kind: memory}}}}\n"
        "http: {port: 18080, admin_port: 18081}\ngrpc: {port: 18051}\n"
    )
    return config


@pytest.mark.parametrize(
    ("flags", "problem"),
    [
        (
            ["--grpc-port", "18080"],
            "--grpc-port (grpc.port): 18080 is also http.port; each listener needs a port of its own",
        ),
        (["--workers", "0"], "--workers (workers): expected a positive integer, got 0"),
        (
            ["--http-port", "18081"],
            "{config}: http.admin_port: 18081 is also --http-port (http.port); each listener needs a port of its own",
        ),
    ],
    ids=["a clash of the flag", "a bad flag value", "a clash with the file"],
)
def test_a_bad_value_given_by_a_serve_flag_is_reported_as_the_flags_not_the_config_files(
    tmp_path: Path, flags: list[str], problem: str
) -> None:
    """`--grpc-port 18080` was `c.yaml: grpc.port: 18080 is also http.port`, though c.yaml
    says 18051 (review s57, cli finding 8). A clash with the file's own setting names both."""
    config = _serve_config(tmp_path)
    out = cli("serve", "--config", str(config), *flags)
    assert (out.returncode, out.stdout) == (2, ""), out
    assert out.stderr == f"error: INVALID_ARGUMENT: {problem.format(config=config)}\n"
