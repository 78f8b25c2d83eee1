"""The CLI's failures outside the program (network, files, config) are one line on
stderr and exit code 2, never a traceback; --version; registry show's default; what
ddl prints for a stream view."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import ROOT, ServerProcess, free_port


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


def test_produce_sample_against_an_unreachable_broker_prints_one_line(tmp_path: Path) -> None:
    """It was cimpl.KafkaException's traceback, exit 1 (review s57, cli finding 3)."""
    config = tmp_path / "k.yaml"
    config.write_text(f"stream: {{kafka: {{bootstrap_servers: '127.0.0.1:{free_port()}'}}}}\n")
    out = cli("stream", "produce-sample", "--config", str(config), "--seconds", "1")
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    [line] = [x for x in out.stderr.splitlines() if x.startswith("error: ")]  # after librdkafka's log line
    assert line.startswith("error: UNAVAILABLE: confluent_kafka: KafkaException: _TRANSPORT: "), line


@pytest.mark.parametrize("key", ["--5", "²", "+5", "1_000"])
@pytest.mark.parametrize("transport", ["--url", "--grpc"])
def test_join_with_a_key_an_int64_entity_cannot_take_prints_one_line_naming_the_entity_and_key(
    server: ServerProcess, transport: str, key: str
) -> None:
    """`--5` and `²` passed the CLI's integer test and crashed int(): a traceback, exit 1
    (review s57, cli finding 5). They go as text, which the server refuses, naming them."""
    where = server.url if transport == "--url" else server.grpc_target
    line = one_line_error(
        cli("join", transport, where, "--entity", f"user_id={key}", "--features", "user_profile:age")
    )
    assert line == f"error: INVALID_ARGUMENT: entity 'user_id' takes int64 keys; row 0 is str ({key!r})"


def test_join_refuses_an_entity_given_twice(server: ServerProcess) -> None:
    """`--entity user_id=17 --entity user_id=18` joined 18 alone, exit 0 (review s57, cli finding 7)."""
    line = one_line_error(
        cli(
            "join",
            "--url",
            server.url,
            "--entity",
            "user_id=17",
            "--entity",
            "user_id=18",
            "--features",
            "user_profile:age",
        )
    )
    assert (
        line
        == "error: INVALID_ARGUMENT: --entity user_id given twice: give all its keys in one, --entity user_id=K1,K2,..."
    )


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


def test_a_swapped_time_range_is_refused_before_anything_is_read(tmp_path: Path) -> None:
    """It read no row and published an empty version over the served one, exit 0. The
    registry here is empty: reading it would fail otherwise."""
    config = tmp_path / "c.yaml"
    config.write_text(f"registry: {{path: {tmp_path / 'reg'}}}\n")
    for start, end in [("2024-05-02", "2024-05-01"), ("2024-05-01T00:00:00Z", "2024-05-01")]:
        line = one_line_error(
            cli("materialize", "--config", str(config), "--all", "--start", start, "--end", end)
        )
        assert line == (
            f"error: INVALID_ARGUMENT: --start {start} must be before --end {end}: no event time is in that range"
        )


@pytest.mark.parametrize("reader", ["validate", "--config", "--token-file"])
def test_a_file_that_is_not_utf8_prints_one_line_naming_it(tmp_path: Path, reader: str) -> None:
    """A Latin-1 description (or UTF-16, or a DER key as a token) was UnicodeDecodeError's traceback."""
    latin1 = tmp_path / "latin1.yaml"
    latin1.write_bytes(b'project: p\nentities: [{name: u, dtype: int64, description: "caf\xe9"}]\n')
    args = {
        "validate": ["validate", str(latin1)],
        "--config": ["registry", "history", "--config", str(latin1)],
        "--token-file": ["join", "--entity", "u=1", "--features", "v:f", "--token-file", str(latin1)],
    }[reader]
    line = one_line_error(cli(*args))
    assert line.startswith("error: INVALID_ARGUMENT: ") and "latin1.yaml" in line
    at = latin1.read_bytes().index(b"\xe9")
    assert f"not UTF-8 text (at byte {at}: invalid continuation byte)" in line


def _registry_with(tmp_path: Path, stores: str, views: str) -> Path:
    """A file registry holding ``views`` (YAML list items of feature_views and
    stream_views), and a config with ``stores``."""
    config = tmp_path / "c.yaml"
    config.write_text(
        f"registry: {{path: {tmp_path / 'reg'}}}\nderived: {{cache_dir: {tmp_path / 'kernels'}}}\n"
        f"stores: {stores}\n"
    )
    defs = tmp_path / "defs.yaml"
    defs.write_text("project: demo\nentities: [{name: user_id, dtype: int64}]\n" + views)
    applied = cli("apply", str(defs), "--config", str(config))
    assert applied.returncode == 0, applied.stderr
    return config


STREAM_VIEW = (
    "stream_views:\n  - {name: clicks, entities: [user_id], source: {topic: clicks},\n"
    "     aggregations: [{name: n_5m, function: count, window: 5m}]}\n"
)
PLAIN_VIEW = "feature_views:\n  - {name: plain, entities: [user_id], features: [{name: x, dtype: int64}]}\n"


def test_ddl_with_a_bad_clickhouse_store_option_is_a_one_line_error(tmp_path: Path) -> None:
    """(The option fails every command's config load, apply's too: it is set after the apply.)"""
    config = _registry_with(tmp_path, "{default: {kind: clickhouse, dsn: 'http://h:8123'}}", PLAIN_VIEW)
    config.write_text(config.read_text().replace("dsn: 'http://h:8123'", "dsn: 'http://h:8123', bogus: 1"))
    line = one_line_error(cli("ddl", "--config", str(config)))
    assert line.startswith(
        f"error: INVALID_ARGUMENT: {config}: stores.default: bogus: unknown clickhouse store option"
    )


def test_ddl_prints_no_table_for_a_stream_view_which_no_clickhouse_store_keeps(tmp_path: Path) -> None:
    config = _registry_with(
        tmp_path, "{default: {kind: clickhouse, dsn: 'http://h:8123'}}", PLAIN_VIEW + STREAM_VIEW
    )
    out = cli("ddl", "--config", str(config))
    assert out.returncode == 0, out.stderr
    assert "`demo__plain__v0`" in out.stdout and "clicks__v0" not in out.stdout
    assert (
        "-- clicks: store default: no table (a stream view: stream views are kept in memory or redis"
        in out.stdout
    )


def test_check_consistency_of_a_view_without_a_batch_source_names_no_flag_check_lacks(tmp_path: Path) -> None:
    """It said "name one with --source", a flag of materialize's, not check's."""
    config = _registry_with(tmp_path, "{default: {kind: memory}}", PLAIN_VIEW + STREAM_VIEW)

    def error(view: str) -> str:
        out = cli("check", "consistency", "--config", str(config), "--view", view)
        assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
        # the error comes after the store's log lines
        [line] = [x for x in out.stderr.splitlines() if x.startswith("error: ")]
        return line

    assert error("plain") == (
        "error: INVALID_ARGUMENT: view 'plain' declares no batch_source: no offline rows to check it against"
    )
    stream = error("clicks")
    assert "view 'clicks' is a stream view: stream views have no batch source" in stream
    assert "--source" not in stream


def test_a_registry_pointer_that_is_no_number_is_a_one_line_error_naming_it_for_the_cli_and_serve(
    tmp_path: Path,
) -> None:
    """A ValueError traceback, exit 1 (``int()`` of the pointer's value)."""
    config = _registry_with(tmp_path, "{default: {kind: memory}}", PLAIN_VIEW)
    pointer = tmp_path / "reg" / "demo" / "registry" / "current"
    pointer.write_text("x2")
    expected = (
        f"error: FAILED_PRECONDITION: registry pointer {pointer} is malformed: 'x2' is no version number; "
    )
    assert one_line_error(cli("registry", "history", "--config", str(config))).startswith(expected)
    ports = ["--http-port", str(free_port()), "--grpc-port", str(free_port())]
    out = cli("serve", "--config", str(config), *ports)
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    [line] = [x for x in out.stderr.splitlines() if x.startswith("error: ")]  # after the start's log lines
    assert line.startswith(expected) and "write into it the version of the snapshot to serve" in line
