"""Configuration layers: the environment (nested names and the short aliases), secrets
from files, and errors that name the setting and where it was set."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr, ValidationError

from featurestore.config import Config, load_config
from featurestore.errors import InvalidArgument


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    f = tmp_path / "config.yaml"
    f.write_text(
        "http: {port: 9000}\n"
        "registry: {kind: etcd, endpoints: ['http://e:2379']}\n"
        "stores: {default: {kind: redis, url: 'redis://r:6379/0', pool_size: 8}}\n"
        "lineage: {bolt: {uri: 'bolt://n:7687', user: neo4j}}\n"
    )
    return f


def test_every_setting_can_be_set_from_the_environment_by_its_nested_name(
    config_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FEATURESTORE_LIMITS__DEADLINE_MS", "120")
    monkeypatch.setenv("FEATURESTORE_STORES__DEFAULT__URL", "rediss://r2:6380/0")
    monkeypatch.setenv("FEATURESTORE_LINEAGE__KAFKA__BOOTSTRAP_SERVERS", "k1:9092,k2:9092")
    monkeypatch.setenv("FEATURESTORE_REGISTRY__ENDPOINTS", "https://e1:2379,https://e2:2379")
    monkeypatch.setenv("FEATURESTORE_HTTP__ADMIN_PORT", "8081")
    monkeypatch.setenv("FEATURESTORE_TRACING__SAMPLE_RATIO", "0.5")
    c = load_config(config_file)
    assert c.limits.deadline_ms == 120 and c.http.port == 9000 and c.http.admin_port == 8081
    assert dict(c.stores["default"].options) == {"url": "rediss://r2:6380/0", "pool_size": 8}
    assert c.lineage.kafka.bootstrap_servers == "k1:9092,k2:9092"
    assert c.registry.endpoints == ("https://e1:2379", "https://e2:2379")
    assert c.tracing.sample_ratio == 0.5 and c.lineage.bolt.uri == "bolt://n:7687"


def test_flags_beat_the_environment_which_beats_the_file_and_nested_names_beat_aliases(
    config_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FEATURESTORE_HTTP_PORT", "9100")
    assert load_config(config_file).http.port == 9100
    monkeypatch.setenv("FEATURESTORE_HTTP__PORT", "9200")
    assert load_config(config_file).http.port == 9200
    assert load_config(config_file, {("http", "port"): 9300, ("workers",): None}).http.port == 9300


def test_a_secret_is_read_from_the_file_its_file_setting_names(
    tmp_path: Path, config_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "neo4j").write_text("bolt-pw\n")
    (tmp_path / "redis").write_text("redis-pw")
    monkeypatch.setenv("FEATURESTORE_LINEAGE__BOLT__PASSWORD_FILE", str(tmp_path / "neo4j"))
    monkeypatch.setenv("FEATURESTORE_STORES__DEFAULT__PASSWORD_FILE", str(tmp_path / "redis"))
    c = load_config(config_file)
    assert c.lineage.bolt.password.get_secret_value() == "bolt-pw"  # the trailing newline dropped
    assert c.stores["default"].options["password"].get_secret_value() == "redis-pw"
    assert "bolt-pw" not in repr(c) and "redis-pw" not in repr(c)


def test_a_secret_given_inline_and_as_a_file_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("x")
    f = tmp_path / "config.yaml"
    f.write_text(f"registry: {{password: a, password_file: {tmp_path / 'pw'}}}\n")
    with pytest.raises(InvalidArgument, match=r"registry.password_file: give password or password_file"):
        load_config(f)


def test_an_unreadable_secret_file_names_the_setting_and_its_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FEATURESTORE_LINEAGE__BOLT__PASSWORD_FILE", str(tmp_path / "missing"))
    with pytest.raises(
        InvalidArgument,
        match=r"^config: FEATURESTORE_LINEAGE__BOLT__PASSWORD_FILE \(lineage.bolt.password_file\): "
        "cannot read the secret file",
    ):
        load_config()


def test_a_bad_value_from_the_environment_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEATURESTORE_LIMITS__DEADLINE_MS", "-1")
    with pytest.raises(
        InvalidArgument,
        match=r"FEATURESTORE_LIMITS__DEADLINE_MS \(limits.deadline_ms\): expected a positive integer, got -1",
    ):
        load_config()


def test_null_in_the_environment_restores_the_default_of_a_setting_the_file_gave_a_value(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A nullable setting's default is None ("by store kind" for fills_per_round_trip):
    once the file named a value, the environment could not restore it ("expected a
    number, got 'null'")."""
    f = tmp_path / "config.yaml"
    f.write_text(
        "cache: {fills_per_round_trip: 2}\nhttp: {admin_port: 8081}\nregistry: {definitions: defs.yaml}\n"
    )
    monkeypatch.setenv("FEATURESTORE_CACHE__FILLS_PER_ROUND_TRIP", "null")
    monkeypatch.setenv("FEATURESTORE_HTTP__ADMIN_PORT", "NULL")
    monkeypatch.setenv("FEATURESTORE_DEFINITIONS", "null")  # a short alias too
    c = load_config(f)
    assert (c.cache.fills_per_round_trip, c.http.admin_port, c.registry.definitions) == (None, None, None)


def test_null_in_the_environment_is_text_to_a_setting_that_takes_no_null(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FEATURESTORE_REGISTRY__USERNAME", "null")
    assert load_config().registry.username == "null"
    monkeypatch.setenv("FEATURESTORE_LIMITS__DEADLINE_MS", "null")
    with pytest.raises(InvalidArgument, match=r"\(limits.deadline_ms\): expected an integer, got 'null'"):
        load_config()


def test_an_unknown_setting_in_the_environment_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEATURESTORE_LIMITS__DEADLINEMS", "5")
    with pytest.raises(InvalidArgument, match=r"limits.deadlinems\): unknown setting; known: deadline_ms"):
        load_config()


def test_an_error_never_shows_a_secret_value(tmp_path: Path) -> None:
    f = tmp_path / "config.yaml"
    f.write_text("lineage: {bolt: {password: hunter2-secret, port: 1}}\n")
    with pytest.raises(InvalidArgument) as raised:
        load_config(f)
    assert "lineage.bolt.port: unknown setting" in str(raised.value)
    assert "hunter2" not in str(raised.value)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        # a store without kind: its keys, not its values
        ('stores:\n  default: {url: "redis://r:6379/0", password: "S3cr3t-NoKind"}\n',
         "stores.default: expected a mapping with 'kind' (memory, redis or clickhouse); its keys: password, url"),
        # a store written as a bare URL holding its password
        ('stores:\n  default: "redis://:S3cr3t-str@host"\n', "stores.default: expected a mapping, got a string"),
        # YAML syntax errors: PyYAML quotes the offending line
        ('stores:\n  default: {kind: redis, password: "S3cr3t-Yaml\n',
         "invalid YAML: while scanning a quoted scalar at line 2, column 36; found unexpected end of stream"),
        ("registry:\n  kind: etcd\n  password: S3cr3t-tab\n\tusername: x\n",
         "invalid YAML: .*that cannot start any token at line 4, column 1"),
    ],
)  # fmt: skip
def test_a_config_error_names_the_problem_and_where_never_a_value_that_may_be_a_secret(
    tmp_path: Path, text: str, problem: str
) -> None:
    f = tmp_path / "config.yaml"
    f.write_text(text)
    with pytest.raises(InvalidArgument, match=problem.replace("(", r"\(").replace(")", r"\)")) as raised:
        load_config(f)
    assert "S3cr3t" not in str(raised.value)


def test_a_password_set_for_a_misspelt_store_in_the_environment_is_not_shown(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FEATURESTORE_STORES__DEFAUL__PASSWORD", "S3cr3t-env")
    with pytest.raises(InvalidArgument, match=r"stores\.defaul: expected a mapping with 'kind'") as raised:
        load_config()
    assert "S3cr3t" not in str(raised.value)


def test_config_without_arguments_is_the_defaults_whatever_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FEATURESTORE_HTTP__PORT", "9999")
    assert Config().http.port == 8080 and load_config().http.port == 9999


def test_the_kubernetes_deployment_s_environment_configures_tls_tokens_and_secrets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """deploy/k8s/featurestore.yaml's FEATURESTORE_* variables over its ConfigMap, with the
    mounted files stood in for under tmp_path: every variable is a real setting."""
    from featurestore.auth import Authenticator
    from tests.security import make_certs
    from tests.unit.test_deploy_k8s import env, find, pod

    certs = make_certs(tmp_path / "certs")
    (tmp_path / "tokens").write_text("tokens-value-0123456789 read\n")
    stand_in = {"tls.crt": certs.cert, "tls.key": certs.key}
    (tmp_path / "config.yaml").write_text(find("ConfigMap", "featurestore-config")["data"]["config.yaml"])
    container = pod(find("Deployment", "featurestore"))["containers"][0]
    for name, value in env(container).items():
        if not name.startswith("FEATURESTORE_"):
            continue
        if name.endswith("_FILE"):
            filename = value.rpartition("/")[2]
            target = stand_in.get(filename, tmp_path / filename)
            if not target.exists():
                target.write_text(f"{filename}-value\n")
            value = str(target)
        monkeypatch.setenv(name, value)
    c = load_config(tmp_path / "config.yaml")
    assert c.http.admin_port == 8081 and c.tls.enabled
    assert c.stores["default"].options["password"].get_secret_value() == "redis-password-value"
    assert c.lineage.bolt.password.get_secret_value() == "neo4j-password-value"
    assert Authenticator.from_config(c.auth) is not None


def _leaf_settings(section: Any, path: tuple[str, ...]) -> Iterator[tuple[tuple[str, ...], Any]]:
    """(path, default) of every setting under the dataclass instance ``section``."""
    for f in dataclasses.fields(section):
        value = getattr(section, f.name)
        if dataclasses.is_dataclass(value):
            yield from _leaf_settings(value, (*path, f.name))
        else:
            yield (*path, f.name), value


def _all_settings() -> list[tuple[tuple[str, ...], Any]]:
    defaults = Config()
    out: list[tuple[tuple[str, ...], Any]] = []
    for name in Config.model_fields:
        value = getattr(defaults, name)
        if dataclasses.is_dataclass(value):
            out.extend(_leaf_settings(value, (name,)))
        elif name != "stores":  # a mapping of named stores: their options are docs/storage.md's
            out.append(((name,), value))
    return out


def test_every_setting_is_listed_in_docs_configuration_md() -> None:
    doc = (Path(__file__).parents[2] / "docs" / "configuration.md").read_text()
    missing = [".".join(p) for p, _ in _all_settings() if not re.search(rf"(?m)^\s*{p[-1]}:", doc)]
    assert missing == []


def _env_text(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, tuple):
        return ",".join(value)
    if isinstance(value, SecretStr):
        return "s3cret"
    return "" if value is None else str(value)


def test_every_setting_is_accepted_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each variable with a valid value (the setting's default) is read, none is unknown."""
    for path, value in _all_settings():
        if value is not None:
            if path[-1] == "security_protocol":  # the secrets set below: a Kafka with SASL and TLS
                value = "sasl_ssl"
            elif path[-1] == "sasl_username":
                value = "lineage"
            monkeypatch.setenv("FEATURESTORE_" + "__".join(path).upper(), _env_text(value))
    c = load_config()
    assert (
        c.http.write_timeout_seconds == 30.0 and c.lineage.kafka.sasl_password.get_secret_value() == "s3cret"
    )


@pytest.mark.parametrize("project", ["x`y", "a-b", "1st", "demo\n", ""])
def test_a_project_that_is_not_a_name_is_refused(project: str) -> None:
    """It becomes part of every store's keys and of ClickHouse's table names."""
    with pytest.raises(ValidationError):
        Config(project=project)


@pytest.mark.parametrize(
    ("cluster", "stores"), [("false", ["default", "stream:default"]), ("true", ["default"])]
)
def test_a_redis_store_s_cluster_option_from_the_environment_is_read_as_a_boolean(
    cluster: str, stores: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The text "false" keeps the stream views' tile reader beside a standalone Redis."""
    from featurestore.factories import make_serving_stores

    monkeypatch.setenv("FEATURESTORE_STORES__DEFAULT__KIND", "redis")
    monkeypatch.setenv("FEATURESTORE_STORES__DEFAULT__URL", "redis://r:6379/0")
    monkeypatch.setenv("FEATURESTORE_STORES__DEFAULT__CLUSTER", cluster)
    assert sorted(make_serving_stores(load_config())) == stores


def test_an_unknown_tracing_exporter_is_an_error_naming_the_setting_and_the_exporters(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    f = tmp_path / "config.yaml"
    f.write_text("tracing: {exporter: jaeger}\n")
    with pytest.raises(
        InvalidArgument, match=r"tracing.exporter: unknown tracing exporter 'jaeger'; use none, console, otlp"
    ):
        load_config(f)
    monkeypatch.setenv("FEATURESTORE_TRACING__EXPORTER", " OTLP ")
    assert load_config(f).tracing.exporter == "otlp"


def test_the_etcd_call_timeout_reaches_the_registry_and_must_be_positive(tmp_path: Path) -> None:
    from featurestore.factories import make_registry
    from featurestore.registry.etcd import EtcdRegistry

    f = tmp_path / "config.yaml"
    f.write_text("registry: {kind: etcd, timeout_seconds: 7.5}\n")
    registry = make_registry(load_config(f))
    assert isinstance(registry, EtcdRegistry)
    assert registry._link.timeout == 7.5  # our own attribute: what each call is given
    f.write_text("registry: {kind: etcd, timeout_seconds: 0}\n")
    with pytest.raises(InvalidArgument, match=re.escape("registry.timeout_seconds")):
        load_config(f)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("http: {port: 8080, admin_port: 8080}", "http.admin_port: 8080 is also http.port;"),
        (
            "http: {host: 0.0.0.0, port: 8080}\ngrpc: {host: 127.0.0.1, port: 8080}",
            "grpc.port: 8080 is also http.port (hosts '0.0.0.0' and '127.0.0.1' overlap);",
        ),
        (
            "http: {port: 9000, admin_port: 9001}\ngrpc: {port: 9001}",
            "grpc.port: 9001 is also http.admin_port;",
        ),
        (
            "http: {host: localhost, port: 9000}\ngrpc: {host: 10.0.0.1, port: 9000}",
            "grpc.port: 9000 is also http.port (hosts 'localhost' and '10.0.0.1' overlap);",
        ),
    ],
)
def test_two_listeners_on_one_port_of_hosts_that_can_overlap_are_refused_naming_both_settings(
    tmp_path: Path, text: str, message: str
) -> None:
    """A supervised worker binds with SO_REUSEPORT: the kernel would let its own listeners
    share the port and split connections between them, where one process fails to bind."""
    f = tmp_path / "config.yaml"
    f.write_text(text)
    with pytest.raises(
        InvalidArgument, match=re.escape(f"config.yaml: {message} each listener needs a port of its own")
    ):
        load_config(f)


def test_one_port_on_two_distinct_addresses_is_accepted(tmp_path: Path) -> None:
    f = tmp_path / "config.yaml"
    f.write_text("http: {host: 127.0.0.1, port: 9000}\ngrpc: {host: 127.0.0.2, port: 9000}\n")
    assert load_config(f).grpc.port == load_config(f).http.port == 9000
