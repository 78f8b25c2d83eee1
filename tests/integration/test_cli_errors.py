"""The CLI's failures outside the program (network, files, config) are one line on
stderr and exit code 2, never a traceback; --version; registry show's default."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import ROOT, free_port


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "featurestore.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )


def one_line_error(out: subprocess.CompletedProcess[str]) -> str:
    """The line of ``error: CODE: message`` (CODE: the API's status names)."""
    assert out.returncode == 2, out
    assert "Traceback" not in out.stderr
    lines = out.stderr.splitlines()
    assert len(lines) == 1 and re.match(r"error: [A-Z_]+: \S", lines[0]), out.stderr
    return lines[0]


def test_version_prints_the_installed_version() -> None:
    from featurestore.cli import version

    out = cli("--version")
    assert out.returncode == 0 and out.stdout.strip() == f"featurestore {version()}"


@pytest.mark.parametrize("transport", ["--url", "--grpc"])
def test_join_against_a_server_that_is_down_prints_one_line(transport: str) -> None:
    port = free_port()
    where = f"http://127.0.0.1:{port}" if transport == "--url" else f"127.0.0.1:{port}"
    line = one_line_error(
        cli("join", transport, where, "--entity", "user_id=1", "--features", "v:f", "--deadline", "1")
    )
    assert "UNAVAILABLE" in line and str(port) in line


def test_a_missing_or_malformed_config_prints_one_line(tmp_path: Path) -> None:
    assert "No such file" in one_line_error(
        cli("registry", "history", "--config", str(tmp_path / "none.yaml"))
    )
    bad = tmp_path / "bad.yaml"
    bad.write_text("stores: [\n")
    assert "bad.yaml" in one_line_error(cli("registry", "history", "--config", str(bad)))
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("registy: {}\n")
    assert "registy" in one_line_error(cli("registry", "history", "--config", str(unknown)))


def test_a_missing_definitions_or_parquet_file_prints_one_line(tmp_path: Path) -> None:
    assert "none.yaml" in one_line_error(cli("validate", str(tmp_path / "none.yaml")))
    config = tmp_path / "c.yaml"
    config.write_text(f"registry: {{path: {tmp_path / 'reg'}}}\n")
    out = cli(
        "materialize", "--config", str(config), "--view", "v", "--source", str(tmp_path / "none.parquet")
    )
    one_line_error(out)


def test_an_unreachable_etcd_registry_prints_one_line(tmp_path: Path) -> None:
    config = tmp_path / "etcd.yaml"
    config.write_text(f"registry: {{kind: etcd, endpoints: ['http://127.0.0.1:{free_port()}']}}\n")
    one_line_error(cli("registry", "history", "--config", str(config)))


def test_registry_show_without_a_version_shows_the_current_snapshot(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(
        f"registry: {{path: {tmp_path / 'reg'}}}\nderived: {{cache_dir: {tmp_path / 'kernels'}}}\n"
    )
    assert "registry is empty" in one_line_error(cli("registry", "show", "--config", str(config)))
    repo = ROOT / "featurestore" / "demo" / "features.yaml"
    assert cli("apply", str(repo), "--config", str(config)).returncode == 0
    assert cli("apply", str(repo), "--config", str(config), "-m", "again").returncode == 0  # no change
    shown = cli("registry", "show", "--config", str(config))
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout) == json.loads(
        cli("registry", "show", "1", "--config", str(config)).stdout
    )


def test_ddl_on_an_empty_registry_is_a_one_line_error(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(f"registry: {{path: {tmp_path / 'reg'}}}\n")
    line = one_line_error(cli("ddl", "--config", str(config)))
    assert line.startswith("error: FAILED_PRECONDITION: the registry is empty")


@pytest.mark.parametrize("taken", ["--grpc-port", "--http-port"])
def test_serve_on_a_port_in_use_is_a_one_line_error(taken: str, test_repo: Path, tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(
        f"registry: {{path: {tmp_path / 'reg'}}}\nstores: {{default: {{kind: memory}}, local: {{kind: memory}}}}\n"
    )
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        ports = {"--grpc-port": str(free_port()), "--http-port": str(free_port())}
        ports[taken] = str(holder.getsockname()[1])
        args = [a for flag, port in ports.items() for a in (flag, port)]
        out = cli("serve", "--config", str(config), "--definitions", str(test_repo), *args)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    [line] = [x for x in out.stderr.splitlines() if x.startswith("error: ")]  # after the start's log lines
    assert re.match(r"error: [A-Z_]+: ", line) and ports[taken] in line, line


@pytest.mark.parametrize(
    ("args", "problem"),
    [
        (["--url", "localhost:8080"], "address 'localhost:8080': expected http://host:port"),
        (["--grpc", "127.0.0.1:1/x"], "address 'grpc://127.0.0.1:1/x'"),
        (["--url", "http://127.0.0.1:1", "--deadline", "0"], "deadline must be a positive number"),
        (["--url", "http://127.0.0.1:1", "--deadline", "nan"], "deadline must be a positive number"),
    ],
)
def test_join_with_a_bad_address_or_deadline_prints_one_line(args: list[str], problem: str) -> None:
    line = one_line_error(cli("join", *args, "--entity", "user_id=1", "--features", "v:f"))
    assert line.startswith("error: INVALID_ARGUMENT: ") and problem in line


@pytest.mark.parametrize(
    ("flag", "problem"),
    [
        (["--batch-rows", "0"], "--batch-rows must be at least 1, got 0"),
        (["--grace-seconds", "-1"], "--grace-seconds must be 0 or more, got -1"),
    ],
)
def test_materialize_with_a_bad_batch_or_grace_prints_one_line(
    tmp_path: Path, flag: list[str], problem: str
) -> None:
    """--batch-rows 0 was pyarrow's ArrowInvalid traceback; a negative grace was taken."""
    config = tmp_path / "c.yaml"
    config.write_text(f"registry: {{path: {tmp_path / 'reg'}}}\n")
    line = one_line_error(cli("materialize", "--config", str(config), "--all", *flag))
    assert line == f"error: INVALID_ARGUMENT: {problem}"
