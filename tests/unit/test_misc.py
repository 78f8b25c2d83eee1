"""Configuration, demo data identity and size, generated code freshness, codecs, CLI table
and join arguments."""

from __future__ import annotations

import ast
import filecmp
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from featurestore.api.json_codec import decode_join
from featurestore.cli import render_table
from featurestore.config import load_config
from featurestore.demo.data import PEER_SHA256, canonical_sha256, generate
from featurestore.errors import InvalidArgument

ROOT = Path(__file__).resolve().parents[2]


def test_config_layers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = tmp_path / "c.yaml"
    f.write_text(
        "http: {port: 9000}\nstores: {default: {kind: redis, url: 'redis://h:1/0'}}\ncache: {ttl_seconds: 5}\n"
    )
    monkeypatch.setenv("FEATURESTORE_GRPC_PORT", "7000")
    monkeypatch.setenv("FEATURESTORE_HTTP_PORT", "9100")
    c = load_config(f, {("workers",): 3})
    assert c.http.port == 9100 and c.grpc.port == 7000 and c.workers == 3
    assert c.stores["default"].kind == "redis" and c.stores["default"].options["url"] == "redis://h:1/0"
    assert c.cache.ttl_seconds == 5.0 and c.cache.max_entries == 200_000


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("htp: {port: 1}", "config.yaml: htp: unknown setting"),
        ("http: {port: abc}", "http.port: expected an integer"),
        ("stores: {x: {kind: mongo}}", "stores.x.kind: unknown store kind 'mongo'"),
        ("- 1", "expected a mapping"),
        ("limits: {max_rows: 1.5}", "limits.max_rows: expected an integer, got 1.5"),
        ("limits: {deadline_ms: 0}", "limits.deadline_ms: expected a positive integer, got 0"),
        ("workers: -2", "workers: expected a positive integer, got -2"),
        ("workers: true", "workers: expected an integer, got True"),
        ("http: {port: 70000}", "http.port: expected a positive integer up to 65535"),
        ("cache: {ttl_seconds: -1}", "cache.ttl_seconds: expected a positive number"),
        ("tracing: {sample_ratio: 2}", "tracing.sample_ratio: expected a ratio between 0 and 1"),
        ("log_level: loud", "log_level: unknown log level 'loud'"),
    ],
)
def test_config_errors(tmp_path: Path, text: str, message: str) -> None:
    f = tmp_path / "config.yaml"
    f.write_text(text)
    with pytest.raises(InvalidArgument, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_config(f)


def test_demo_data_is_the_peer_data() -> None:
    """Same values as ../shared/peers/feast/gen_data.py: its canonical JSONL hash."""
    assert canonical_sha256(generate()) == PEER_SHA256


def test_demo_data_rows_writes_files_of_another_size_again_and_refuses_fewer_than_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--rows 50 over a 100-user file kept it and said it wrote it; --rows -5 was numpy's traceback."""
    import pyarrow.parquet as pq

    from featurestore.cli import main

    users = tmp_path / "users.parquet"
    assert main(["demo-data", "--out", str(tmp_path), "--rows", "100"]) == 0
    mtime = users.stat().st_mtime_ns
    assert main(["demo-data", "--out", str(tmp_path), "--rows", "100"]) == 0
    assert users.stat().st_mtime_ns == mtime  # the same size: kept
    assert main(["demo-data", "--out", str(tmp_path), "--rows", "50"]) == 0
    assert pq.ParquetFile(users).metadata.num_rows == 50
    assert pq.ParquetFile(tmp_path / "user_transactions.parquet").metadata.num_rows < 50
    assert capsys.readouterr().out.splitlines()[-1] == f"demo data: {users} (50 users)"
    assert main(["demo-data", "--out", str(tmp_path / "x"), "--rows", "-5"]) == 2
    assert capsys.readouterr().err == "error: INVALID_ARGUMENT: --rows must be at least 1, got -5\n"


def test_a_quoted_request_value_is_sent_as_text_and_an_unquoted_one_by_its_look() -> None:
    """A STRING request field valued 01234 (a zip code) went out as the number 1234."""
    from featurestore.cli.join import _request_data

    assert _request_data(['zip="01234"', "n=01234,2.5", 'ok=true,"true"', "name=ann"]) == {
        "zip": ["01234"],
        "n": [1234, 2.5],
        "ok": [True, "true"],
        "name": ["ann"],
    }
    # a comma inside quotes is the value's, not a separator
    assert _request_data(['city="Paris, France",Lyon']) == {"city": ["Paris, France", "Lyon"]}


def test_generated_grpc_code_is_fresh(tmp_path: Path) -> None:
    protos = sorted(str(p.relative_to(ROOT / "proto")) for p in (ROOT / "proto").rglob("*.proto"))
    subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", "-Iproto", f"--python_out={tmp_path}", f"--pyi_out={tmp_path}",
         f"--grpc_python_out={tmp_path}", *(f"proto/{p}" for p in protos)],
        cwd=ROOT, check=True,
    )  # fmt: skip
    generated = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*.py*"))
    assert generated, "protoc produced nothing"
    stale = [str(p) for p in generated if not filecmp.cmp(tmp_path / p, ROOT / p, shallow=False)]
    assert not stale, f"generated code is stale, run `make proto`: {stale}"


def test_json_decode_keeps_order_and_types() -> None:
    req = decode_join(
        b'{"entities": {"b": [1], "a": ["x"]}, "features": ["v:f"], "full_feature_names": true}'
    )
    assert list(req.entities) == ["b", "a"] and req.features == ("v:f",) and req.full_feature_names
    with pytest.raises(InvalidArgument, match="unknown field"):
        decode_join(b'{"entities": {"a": [1]}, "featurez": []}')


def test_render_table() -> None:
    cols: list[dict[str, Any]] = [
        {"values": [1, 2], "statuses": ["PRESENT"] * 2, "event_timestamps": [None, None]},
        {"values": [0.5, None], "statuses": ["PRESENT", "NOT_FOUND"], "event_timestamps": ["t", None]},
    ]
    out = render_table(["user_id", "score"], cols)
    assert out.splitlines()[0].split() == ["user_id", "score"]
    assert "- (NOT_FOUND)" in out.splitlines()[3]
    single = render_table(["user_id", "score"], [{**c, "values": c["values"][:1]} for c in cols])
    assert "score" in single and "0.5" in single


@pytest.mark.parametrize(
    "argv",
    [
        ["registry", "--config", "c.yaml", "rollback", "3"],
        ["registry", "rollback", "3", "--config", "c.yaml"],
        ["canary", "promote", "ranker", "--config", "c.yaml"],
        ["canary", "--config", "c.yaml", "status"],
    ],
)
def test_config_goes_before_or_after_the_subcommand(argv: list[str]) -> None:
    from featurestore.cli import parser

    assert parser().parse_args(argv).config == "c.yaml"


def test_config_defaults_to_none_when_not_given() -> None:
    from featurestore.cli import parser

    assert parser().parse_args(["registry", "history"]).config is None


def test_every_shipped_config_validates(tmp_path: Path) -> None:
    """deploy/ must not rot: the configs it ships load under the current schema."""
    import yaml

    root = Path(__file__).resolve().parents[2]
    paths = sorted((root / "deploy" / "config").glob("*.yaml"))
    for i, doc in enumerate(yaml.safe_load_all((root / "deploy" / "k8s" / "featurestore.yaml").read_text())):
        if doc and doc.get("kind") == "ConfigMap":
            path = tmp_path / f"k8s-{i}.yaml"
            path.write_text(doc["data"]["config.yaml"])
            paths.append(path)
    assert len(paths) >= 3
    for path in paths:
        load_config(str(path))


def test_lineage_depends_on_the_featurestore_model_and_snapshot_types_only() -> None:
    allowed = {"featurestore.model", "featurestore.definitions.snapshot", "featurestore.errors"}
    offenders = []
    for path in (ROOT / "lineage").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("featurestore"):
                if node.module not in allowed:
                    offenders.append(f"{path.relative_to(ROOT)}: {node.module}")
            elif isinstance(node, ast.Import):
                offenders += [
                    f"{path.relative_to(ROOT)}: {a.name}"
                    for a in node.names
                    if a.name.startswith("featurestore")
                ]
    assert offenders == []


def test_only_the_serve_command_imports_the_process_module() -> None:
    """Every other command builds what it needs from featurestore.factories."""
    code = (
        "import sys, featurestore.cli, featurestore.jobs, featurestore.factories, featurestore.runtime\n"
        "assert 'featurestore.process' not in sys.modules, 'process imported'\n"
        "assert 'uvicorn' not in sys.modules, 'uvicorn imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_no_module_is_over_400_lines_and_no_function_over_80() -> None:
    """The house rule (docs/architecture.md): one noun per module, small enough to read."""
    too_long = []
    for package in ("featurestore", "lineage"):
        for path in (ROOT / package).rglob("*.py"):
            if path.parent.name == "v1":  # generated gRPC code
                continue
            text = path.read_text()
            name = str(path.relative_to(ROOT))
            if len(text.splitlines()) > 400:
                too_long.append(f"{name}: {len(text.splitlines())} lines")
            for node in ast.walk(ast.parse(text)):
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                    assert node.end_lineno is not None
                    if node.end_lineno - node.lineno + 1 > 80:
                        too_long.append(f"{name}: {node.name}() {node.end_lineno - node.lineno + 1} lines")
    assert too_long == []
