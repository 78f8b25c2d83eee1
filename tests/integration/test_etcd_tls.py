"""The etcd registry over mutual TLS with a user and a password from a file, against a
real etcd serving TLS only, asking for client certificates, with authentication on."""

from __future__ import annotations

import inspect
import uuid
from collections.abc import Iterator
from pathlib import Path

import aetcd
import pytest

from featurestore.config import load_config
from featurestore.definitions.parser import load_definitions
from featurestore.errors import Code, PermissionDenied, Unauthenticated
from featurestore.factories import make_registry
from featurestore.registry import etcd_client
from tests.security import Certs, SecureEtcdServer, make_certs


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("etcd-certs"))


@pytest.fixture(scope="module")
def etcd(certs: Certs, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureEtcdServer]:
    server = SecureEtcdServer(tmp_path_factory.mktemp("etcd-tls"), certs).start()
    try:
        server.enable_auth()
        yield server
    finally:
        server.stop()


def config_file(
    tmp_path: Path, etcd: SecureEtcdServer, certs: Certs, password: str, user: str = SecureEtcdServer.USER
) -> Path:
    (tmp_path / "etcd-password").write_text(password + "\n")
    path = tmp_path / "config.yaml"
    path.write_text(
        f"project: tls\nregistry: {{kind: etcd, endpoints: ['{etcd.endpoint}'], username: {user},\n"
        f"  password_file: {tmp_path / 'etcd-password'}, ca_file: {certs.ca},\n"
        f"  cert_file: {certs.client_cert}, key_file: {certs.client_key}}}\n"
    )
    return path


async def test_the_registry_publishes_and_reads_over_tls_as_an_authenticated_user(
    etcd: SecureEtcdServer, certs: Certs, tmp_path: Path, test_repo: Path
) -> None:
    registry = make_registry(load_config(config_file(tmp_path, etcd, certs, etcd.PASSWORD)))
    try:
        published = await registry.publish(load_definitions(test_repo), expected_version=None, message="tls")
        current = await registry.current()
        assert current is not None and current.version == published.version
        assert registry.health().connected
    finally:
        await registry.close()
    listed = etcd.etcdctl("get", "--prefix", "--keys-only", "/featurestore/tls/registry/current", auth=True)
    assert listed.stdout.strip() == "/featurestore/tls/registry/current"


async def test_a_wrong_password_is_unauthenticated_not_a_lost_connection_and_not_shown(
    etcd: SecureEtcdServer, certs: Certs, tmp_path: Path
) -> None:
    """It was UNAVAILABLE ("retry later") and marked the registry disconnected, although
    etcd had answered: a configuration to fix, not an outage."""
    registry = make_registry(load_config(config_file(tmp_path, etcd, certs, "not-the-password-5c2e")))
    try:
        with pytest.raises(Unauthenticated) as raised:
            await registry.current()
        assert raised.value.code is Code.UNAUTHENTICATED
        assert registry.health().connected  # etcd answered
    finally:
        await registry.close()
    assert "authentication failed" in raised.value.message
    assert "check registry.username and registry.password" in raised.value.message
    assert "not-the-password" not in str(raised.value) + repr(raised.value.details)


async def test_a_user_without_permission_on_the_project_is_permission_denied_not_a_lost_connection(
    etcd: SecureEtcdServer, certs: Certs, tmp_path: Path
) -> None:
    """A user whose role reads another project only: it was UNAVAILABLE, and a running
    server reported etcd unreachable (featurestore_registry_connected 0)."""
    user, password = f"u{uuid.uuid4().hex[:6]}", "pw-elsewhere-41f0"
    for args in (["role", "add", user], ["role", "grant-permission", "--prefix=true", user, "readwrite",
                 "/featurestore/elsewhere/"], ["user", "add", f"{user}:{password}"],
                 ["user", "grant-role", user, user]):  # fmt: skip
        out = etcd.etcdctl(*args, auth=True)
        assert out.returncode == 0, out.stderr
    registry = make_registry(load_config(config_file(tmp_path, etcd, certs, password, user)))
    try:
        with pytest.raises(PermissionDenied) as raised:
            await registry.current()
        assert raised.value.code is Code.PERMISSION_DENIED
        assert (
            "permission denied" in raised.value.message
            and "on the prefix /featurestore/tls/ " in raised.value.message
        )
        assert registry.health().connected  # etcd answered
        with pytest.raises(PermissionDenied):
            await registry.swap_data_version("v", expected=0, new=1)
    finally:
        await registry.close()
    assert password not in str(raised.value)


def test_tls_client_connect_is_aetcds_but_for_the_channel() -> None:
    """TlsClient.connect copies aetcd's Client.connect; when aetcd's changes, look again."""
    theirs = inspect.getsource(aetcd.Client.connect)
    assert "self.channel = rpc.insecure_channel(target, options=self._options.items())" in theirs
    for name in ("_connected", "_is_connecting", "_connect_wait_timeout", "_host", "_port", "_options",
                 "_username", "_password", "_timeout", "_watcher", "auth_stub", "metadata"):  # fmt: skip
        assert f"self.{name}" in inspect.getsource(aetcd.Client), name
    statements = [
        line.strip() for line in theirs.splitlines() if line.strip().startswith(("self.", "resp", "target"))
    ]
    ours = inspect.getsource(etcd_client.TlsClient.connect).replace(" ", "")
    for line in statements:
        if "insecure_channel" not in line:
            assert line.replace(" ", "").replace("'", '"').rstrip(",") in ours, line
