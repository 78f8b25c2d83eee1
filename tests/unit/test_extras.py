"""A config that asks for a backend whose extra is not installed fails with an error
naming the extra and the setting, not an ImportError. A missing package is simulated
the way Python itself reports one: ``sys.modules[name] = None`` makes its import raise
ImportError, whether or not it was imported before."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from featurestore.cli import main
from featurestore.config import Config, load_config
from featurestore.errors import FailedPrecondition
from featurestore.extras import MissingExtra
from featurestore.factories import build_lineage, make_graph, make_registry, make_store
from featurestore.tracing import setup_tracing


def config(tmp_path: Path, text: str) -> Config:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return load_config(path)


def missing(monkeypatch: pytest.MonkeyPatch, *modules: str) -> None:
    for module in modules:
        monkeypatch.setitem(sys.modules, module, None)


def raises_missing(fn: Callable[[], Any], extra: str, setting: str) -> None:
    with pytest.raises(MissingExtra) as caught:
        fn()
    assert isinstance(caught.value, FailedPrecondition)
    assert caught.value.extra == extra
    assert f"featurestore[{extra}]" in caught.value.message
    assert setting in caught.value.message


def test_an_etcd_registry_without_the_etcd_extra_names_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    missing(monkeypatch, "aetcd")
    c = config(tmp_path, "registry: {kind: etcd, endpoints: [http://127.0.0.1:1]}\n")
    raises_missing(lambda: make_registry(c), "etcd", "registry.kind: etcd")


def test_a_clickhouse_store_without_the_clickhouse_extra_names_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    missing(monkeypatch, "clickhouse_connect")
    c = config(tmp_path, "stores: {ch: {kind: clickhouse, dsn: 'http://default:@127.0.0.1:1'}}\n")
    raises_missing(lambda: make_store("ch", c.stores["ch"], c), "clickhouse", "stores.ch")


@pytest.mark.parametrize("module", ["chdb", "clickhouse_connect"])
def test_an_embedded_clickhouse_store_without_either_module_names_the_embedded_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, module: str
) -> None:
    missing(monkeypatch, module)
    c = config(tmp_path, f"stores: {{ch: {{kind: clickhouse, dsn: 'chdb://{tmp_path}/ch'}}}}\n")
    raises_missing(lambda: make_store("ch", c.stores["ch"], c), "embedded", "stores.ch")


def test_a_bolt_lineage_graph_without_the_neo4j_extra_names_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    missing(monkeypatch, "neo4j")
    c = config(tmp_path, "lineage: {graph: bolt, graphql: false, sink: kafka}\n")
    raises_missing(lambda: make_graph(c), "neo4j", "lineage.graph: bolt")


async def test_a_kafka_lineage_sink_without_the_kafka_extra_names_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    missing(monkeypatch, "confluent_kafka")
    c = config(tmp_path, "lineage: {sink: kafka, graphql: false}\n")
    with pytest.raises(MissingExtra, match=r"lineage\.sink: kafka needs the 'kafka' extra"):
        await build_lineage(c, {})


async def test_graphql_without_the_graphql_extra_names_it_and_the_setting_that_turns_it_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    missing(monkeypatch, "strawberry")
    c = config(tmp_path, "lineage: {graphql: true}\n")
    with pytest.raises(MissingExtra, match=r"lineage\.graphql.*false.*featurestore\[graphql\]"):
        await build_lineage(c, {})


async def test_graphql_defaults_to_off_without_the_graphql_extra_so_the_default_config_starts_lineage(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The core install runs the defaults (review s58 finding 8): lineage.graphql is on
    by default only where strawberry can be imported."""
    missing(monkeypatch, "strawberry")
    c = load_config()
    assert c.lineage.graphql is False
    lineage = await build_lineage(c, {})
    assert lineage is not None
    await lineage.close()


def test_graphql_defaults_to_on_with_the_graphql_extra_and_an_explicit_false_stays_off(
    tmp_path: Path,
) -> None:
    assert load_config().lineage.graphql is True
    assert config(tmp_path, "lineage: {sink: memory}\n").lineage.graphql is True
    assert config(tmp_path, "lineage: {graphql: false}\n").lineage.graphql is False


def test_otlp_tracing_without_the_otlp_extra_names_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    missing(monkeypatch, "opentelemetry.exporter.otlp.proto.grpc.trace_exporter")
    c = config(tmp_path, "tracing: {exporter: otlp}\n")
    raises_missing(lambda: setup_tracing(c.tracing), "otlp", "tracing.exporter: otlp")


def test_the_cli_prints_the_missing_extra_in_one_line_and_exits_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    missing(monkeypatch, "aetcd")
    path = tmp_path / "config.yaml"
    path.write_text("registry: {kind: etcd, endpoints: [http://127.0.0.1:1]}\n")
    assert main(["registry", "history", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "pip install 'featurestore[etcd]'" in err


@pytest.mark.parametrize("command", ["run", "produce-sample"])
def test_the_stream_commands_without_the_kafka_extra_say_so_in_one_line(
    command: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    missing(monkeypatch, "confluent_kafka")
    config_path = str(Path(__file__).parents[2] / "deploy" / "config" / "stream-demo.yaml")
    extra = ["--view", "clicks_stats"] if command == "run" else ["--topic", "clicks"]
    assert main(["stream", command, "--config", config_path, *extra]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"featurestore stream {command} needs the 'kafka' extra" in err
