"""A ClickHouse store's user and password are settings of their own, the password a
secret that can come from a file (a mounted Kubernetes Secret), used by the online store
and by materializations reading its warehouse tables, never shown."""

from __future__ import annotations

from pathlib import Path

import pytest

from featurestore.config import load_config
from featurestore.jobs import warehouse
from featurestore.sources.clickhouse.options import ClickHouseOptions


@pytest.fixture
def config_path(tmp_path: Path) -> Path:
    (tmp_path / "ch-password").write_text("s3cret-ch\n")
    path = tmp_path / "config.yaml"
    path.write_text(
        "stores:\n"
        "  default: {kind: memory}\n"
        f"  wh: {{kind: clickhouse, dsn: 'https://ch:8443', username: fs, password_file: {tmp_path / 'ch-password'}}}\n"
    )
    return path


def test_the_password_comes_from_its_file_and_goes_to_the_client_only(config_path: Path) -> None:
    options = ClickHouseOptions.from_mapping(dict(load_config(config_path).stores["wh"].options))
    assert options.client_args() == {
        "dsn": "https://ch:8443",
        "interface": "https",
        "secure": True,
        "username": "fs",
        "password": "s3cret-ch",
    }
    assert "s3cret" not in repr(options) and "s3cret" not in str(options)


def test_materializations_read_the_warehouse_with_the_store_s_credentials(config_path: Path) -> None:
    found = warehouse(load_config(config_path), None)
    assert isinstance(found, ClickHouseOptions)
    assert found.client_args()["password"] == "s3cret-ch"
    assert warehouse(load_config(config_path), "http://other:8123") == "http://other:8123"


def test_the_environment_names_the_password_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "pw").write_text("from-env")
    monkeypatch.setenv("FEATURESTORE_STORES__WH__KIND", "clickhouse")
    monkeypatch.setenv("FEATURESTORE_STORES__WH__DSN", "http://ch:8123")
    monkeypatch.setenv("FEATURESTORE_STORES__WH__PASSWORD_FILE", str(tmp_path / "pw"))
    options = ClickHouseOptions.from_mapping(dict(load_config().stores["wh"].options))
    assert options.client_args() == {
        "dsn": "http://ch:8123",
        "interface": "http",
        "secure": False,
        "password": "from-env",
    }


def test_the_in_process_engine_takes_no_credentials() -> None:
    options = ClickHouseOptions(dsn="chdb:///tmp/x", username="u", password="p")  # type: ignore[arg-type]
    assert set(options.client_args()) == {"dsn"}
