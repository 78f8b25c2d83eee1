"""Store options as the config gives them: from YAML, or from the environment, where
every value is text (``FEATURESTORE_STORES__R__CLUSTER=false`` must not turn cluster
mode on); a bad option fails the start naming it, never showing a password. A memory
store takes no options at all."""

from __future__ import annotations

from pathlib import Path

import pytest

from featurestore.config import load_config
from featurestore.errors import InvalidArgument
from featurestore.factories import make_store
from featurestore.sources.clickhouse.options import ClickHouseOptions
from featurestore.sources.redis_options import RedisOptions


def test_integers_and_booleans_from_the_environment_are_read_as_such(monkeypatch: pytest.MonkeyPatch) -> None:
    for var, value in {
        "R__KIND": "redis",
        "R__CLUSTER": "false",
        "R__POOL_SIZE": "8",
        "R__HOLD_ITERATIONS": "0",
        "R__SSL_CHECK_HOSTNAME": "False",
        "CH__KIND": "clickhouse",
        "CH__DSN": "http://ch:8123",
        "CH__THREADS": "2",
    }.items():
        monkeypatch.setenv("FEATURESTORE_STORES__" + var, value)
    stores = load_config().stores
    redis = RedisOptions.from_mapping(dict(stores["r"].options))
    assert redis.cluster is False and redis.pool_size == 8 and redis.ssl_check_hostname is False
    assert redis.hold_iterations == 0
    assert ClickHouseOptions.from_mapping(dict(stores["ch"].options)).threads == 2


@pytest.mark.parametrize("value", ["[hunter2]", "987654321", "0123"])
def test_a_password_that_is_not_text_is_refused_without_showing_it(tmp_path: Path, value: str) -> None:
    """As every other secret: a number is refused rather than made text (YAML reads an
    unquoted 0123 as 83)."""
    config = tmp_path / "c.yaml"
    config.write_text(f"stores: {{default: {{kind: redis, password: {value}}}}}\n")
    with pytest.raises(InvalidArgument, match=r"stores.default: password: expected a string") as raised:
        load_config(config)
    message = str(raised.value).replace(str(config), "<config>")  # a tmp path may hold "83"
    for shown in ("hunter2", "987654321", "0123", "83"):
        assert shown not in message


def test_a_quoted_numeric_password_is_a_password(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("stores: {default: {kind: redis, url: 'redis://h:6379/0', password: '0123'}}\n")
    store = load_config(config).stores["default"]
    assert "0123" not in repr(store)
    assert RedisOptions.from_mapping(dict(store.options)).connection_kwargs()["password"] == "0123"


@pytest.mark.parametrize(
    ("options", "problem"),
    [
        ("pool_size: 0", "pool_size: expected an integer >= 1, got 0"),
        ("pool_size: '8x'", "pool_size: expected an integer >= 1, got '8x'"),
        ("hold_iterations: -1", "hold_iterations: expected an integer >= 0, got -1"),
        ("cluster: 'yes'", "cluster: expected true or false, got 'yes'"),
        ("url: 'http://:hunter2@h:6379'", "url: unsupported scheme 'http'"),
        ("url: 5", "url: expected a string, got int"),
        ("ssl_ca_file: 5, url: 'rediss://h'", "ssl_ca_file: expected a string, got int"),
    ],
)
def test_a_bad_redis_option_fails_the_configs_load_naming_it(
    tmp_path: Path, options: str, problem: str
) -> None:
    """(It failed only when the store was built: `materialize` after its first view.)"""
    config = tmp_path / "c.yaml"
    config.write_text(f"stores: {{default: {{kind: redis, {options}}}}}\n")
    with pytest.raises(InvalidArgument) as raised:
        load_config(config)
    assert str(raised.value).startswith(f"{config}: stores.default: {problem}")
    assert "hunter2" not in str(raised.value)


def test_a_memory_store_refuses_every_option_naming_them_without_their_values(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(
        "stores: {default: {kind: memory, url: 'redis://:hunter2@10.0.0.1:6379/0', pool_size: 8, bogus_option: 1}}\n"
    )
    c = load_config(config)
    with pytest.raises(InvalidArgument) as raised:
        make_store("default", c.stores["default"], c)
    assert (
        str(raised.value) == "stores.default: kind memory takes no options; got bogus_option, pool_size, url"
    )


def test_a_store_url_from_the_environment_on_a_memory_store_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file declaring ``default: {kind: memory}``, deployed with a Redis URL in the
    environment: the start fails instead of serving an empty store."""
    config = tmp_path / "c.yaml"
    config.write_text("stores: {default: {kind: memory}}\n")
    monkeypatch.setenv("FEATURESTORE_STORES__DEFAULT__URL", "redis://redis:6379/0")
    c = load_config(config)
    with pytest.raises(InvalidArgument, match=r"kind memory takes no options; got url$"):
        make_store("default", c.stores["default"], c)


def test_a_memory_store_without_options_and_with_a_cache_setting_is_made(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text("stores: {default: {kind: memory, cache: false}}\n")  # cache: not an option
    c = load_config(config)
    assert type(make_store("default", c.stores["default"], c)).__name__ == "MemorySource"


def test_a_password_file_on_a_memory_store_is_named_as_the_operator_set_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The Kubernetes manifest sets the store's password file: switched to memory, the
    refusal must point at what was set, not at a ``password`` nobody wrote."""
    secret = tmp_path / "pw"
    secret.write_text("hunter2\n")
    config = tmp_path / "c.yaml"
    config.write_text("stores: {default: {kind: memory}}\n")
    monkeypatch.setenv("FEATURESTORE_STORES__DEFAULT__PASSWORD_FILE", str(secret))
    c = load_config(config)
    with pytest.raises(InvalidArgument) as raised:
        make_store("default", c.stores["default"], c)
    assert (
        str(raised.value) == "stores.default: kind memory takes no options; got password (or password_file)"
    )
