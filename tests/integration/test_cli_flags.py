"""Flags the CLI takes values from are checked, and their errors name them (review s57,
cli findings 2, 6 and 11): a numeric flag out of range is argparse's usage error (exit
2, the flag named) before the command reads its config or opens a connection."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.support import ROOT


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "featurestore.cli", *args],
        capture_output=True, text=True, timeout=60, cwd=ROOT, stdin=subprocess.DEVNULL,
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
