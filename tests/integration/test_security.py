"""TLS and bearer tokens on a real server: HTTPS and gRPC over TLS with certificates made
in the test, scopes per route (401 / 403 and their gRPC codes), probes and metrics on
the plain admin port, token rotation through the file, mutual TLS, and the CLI."""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import sys
import urllib.error
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from featurestore.v1 import featurestore_pb2 as pb
from featurestore.v1 import featurestore_pb2_grpc as pbg
from tests.security import Certs, SecureServer, call, make_certs
from tests.support import ROOT, http_get, wait_until

READ, WRITE, ADMIN = "read-token-4f1d-8e2a", "write-token-9a2c-51b7", "admin-token-77e0-c3d9"
JOIN = {"entities": {"user_id": [17]}, "features": ["user_profile:age"]}
PUSH = {
    "feature_view": "user_profile",
    "rows": {"user_id": [1], "age": [30], "tenure_days": [1], "num_devices": [1], "country": ["NL"],
             "plan_tier": ["pro"], "preferred_language": ["nl"], "lifetime_value": [1.0],
             "credit_score": [700.0], "event_timestamp": ["2026-01-01T00:00:00Z"]},
}  # fmt: skip


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("certs"))


def write_config(work: Path, extra: str = "") -> Path:
    config = work / "config.yaml"
    config.write_text(
        f"registry: {{path: {work / 'registry'}}}\n"
        "stores: {default: {kind: memory}, local: {kind: memory}}\n"
        "limits: {deadline_ms: 2000}\n" + extra
    )
    return config


@pytest.fixture(scope="module")
def secure(certs: Certs, test_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureServer]:
    """TLS and tokens set the way deploy/k8s sets them: FEATURESTORE_* variables naming files."""
    work = tmp_path_factory.mktemp("secure")
    tokens = work / "tokens"
    tokens.write_text(f"# one per line\n{READ} read\n{WRITE} write\n{ADMIN} admin,read\n")
    env = {
        "FEATURESTORE_TLS__CERT_FILE": str(certs.cert),
        "FEATURESTORE_TLS__KEY_FILE": str(certs.key),
        "FEATURESTORE_AUTH__TOKENS_FILE": str(tokens),
    }
    proc = SecureServer(
        ["--config", str(write_config(work)), "--definitions", str(test_repo)], env, work / "server.log"
    ).start()
    yield proc
    proc.stop()


def test_a_join_over_https_with_a_read_token_answers(secure: SecureServer, certs: Certs) -> None:
    status, doc, _ = call(secure.url + "/v1/feature/join", certs.client_context(), JOIN, READ)
    assert status == 200 and doc["results"][1]["statuses"] == ["PRESENT"]


def test_a_join_without_a_token_is_401_with_a_bearer_challenge(secure: SecureServer, certs: Certs) -> None:
    status, doc, headers = call(secure.url + "/v1/feature/join", certs.client_context(), JOIN)
    assert status == 401 and doc["error"]["code"] == "UNAUTHENTICATED"
    assert headers["www-authenticate"] == 'Bearer realm="featurestore"'
    status, doc, headers = call(secure.url + "/v1/feature/join", certs.client_context(), JOIN, "nope")
    assert status == 401 and 'error="invalid_token"' in headers["www-authenticate"]
    assert "nope" not in json.dumps(doc)


def test_a_token_without_the_routes_scope_is_403(secure: SecureServer, certs: Certs) -> None:
    context = certs.client_context()
    status, doc, headers = call(secure.url + "/v1/feature/push", context, PUSH, READ)
    assert status == 403 and doc["error"]["code"] == "PERMISSION_DENIED"
    assert (
        headers["www-authenticate"]
        == 'Bearer realm="featurestore", error="insufficient_scope", scope="write"'
    )
    assert call(secure.url + "/v1/feature/join", context, JOIN, WRITE)[0] == 403
    assert call(secure.url + "/v1/registry", context, None, READ)[0] == 403
    assert call(secure.url + "/graphql", context, {"query": "{ __typename }"}, READ)[0] == 403


def test_each_scope_opens_its_routes(secure: SecureServer, certs: Certs) -> None:
    context = certs.client_context()
    status, doc, _ = call(secure.url + "/v1/feature/push", context, PUSH, WRITE)
    assert status == 200 and doc["rows_written"] == 1
    assert call(secure.url + "/v1/registry", context, None, ADMIN)[0] == 200
    assert call(secure.url + "/graphql", context, {"query": "{ __typename }"}, ADMIN)[0] == 200
    assert call(secure.url + "/v1/feature/join", context, JOIN, ADMIN)[0] == 200  # admin,read


def test_probes_and_metrics_are_on_the_plain_admin_port_only(secure: SecureServer, certs: Certs) -> None:
    for path in ("/healthz", "/readyz", "/metrics"):
        assert http_get(secure.admin_url + path)[0] == 200, path
        status, doc, _ = call(secure.url + path, certs.client_context())
        assert status == 404 and "admin port" in doc["error"]["message"], path
    assert http_get(secure.admin_url + "/v1/registry")[0] == 404


def test_refusals_are_counted_by_route_and_reason(secure: SecureServer, certs: Certs) -> None:
    call(secure.url + "/v1/feature/push", certs.client_context(), PUSH)
    call(secure.url + "/v1/feature/push", certs.client_context(), PUSH, READ)
    metrics = http_get(secure.admin_url + "/metrics")[1].decode()
    for reason in ("missing", "forbidden"):
        line = f'featurestore_auth_failures_total{{reason="{reason}",route="/v1/feature/push"}}'
        assert line in metrics, reason
    assert (
        'featurestore_requests_total{outcome="UNAUTHENTICATED",protocol="http",route="/v1/feature/push"}'
        in metrics
    )


def test_a_plaintext_client_or_one_trusting_another_ca_gets_no_answer(
    secure: SecureServer, certs: Certs
) -> None:
    with pytest.raises((urllib.error.URLError, ConnectionError)):
        call(f"http://127.0.0.1:{secure.http_port}/v1/feature/join", None, JOIN, READ, timeout=3)
    with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
        call(secure.url + "/v1/feature/join", certs.client_context(ca=certs.other_ca), JOIN, READ)


def grpc_join(target: str, certs: Certs, token: str | None, **tls: bytes) -> pb.JoinResponse:
    credentials = grpc.ssl_channel_credentials(certs.ca.read_bytes(), **tls)
    req = pb.JoinRequest(features=["user_profile:age"])
    req.entities.add(name="user_id").int64_values.values.extend([17])
    metadata = () if token is None else (("authorization", f"Bearer {token}"),)
    with grpc.secure_channel(target, credentials) as channel:
        stub = pbg.FeatureServiceStub(channel)  # type: ignore[no-untyped-call]
        response: pb.JoinResponse = stub.Join(req, timeout=10, metadata=metadata)
        return response


def test_grpc_over_tls_asks_for_the_same_tokens(secure: SecureServer, certs: Certs) -> None:
    assert grpc_join(secure.grpc_target, certs, READ).metadata.feature_names == ["user_id", "age"]
    with pytest.raises(grpc.RpcError) as missing:
        grpc_join(secure.grpc_target, certs, None)
    assert missing.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert ("www-authenticate", 'Bearer realm="featurestore"') in missing.value.trailing_metadata()
    with pytest.raises(grpc.RpcError) as forbidden:
        grpc_join(secure.grpc_target, certs, WRITE)
    assert forbidden.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_grpc_push_needs_scope_write(secure: SecureServer, certs: Certs) -> None:
    credentials = grpc.ssl_channel_credentials(certs.ca.read_bytes())
    with grpc.secure_channel(secure.grpc_target, credentials) as channel:
        push = channel.unary_unary("/featurestore.v1.FeatureService/Push")
        with pytest.raises(grpc.RpcError) as forbidden:
            push(b"", timeout=10, metadata=(("authorization", f"Bearer {READ}"),))
    assert forbidden.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_the_cli_joins_over_https_and_grpc_tls_with_a_token_file(
    secure: SecureServer, certs: Certs, tmp_path: Path
) -> None:
    token = tmp_path / "token"
    token.write_text(READ + "\n")
    base = [sys.executable, "-m", "featurestore.cli", "join", "--entity", "user_id=17",
            "--features", "user_profile:age", "--ca", str(certs.ca), "--token-file", str(token)]  # fmt: skip
    for target in (["--url", secure.url], ["--grpc", secure.grpc_target]):
        out = subprocess.run([*base, *target], cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert "PRESENT" in out.stdout
    out = subprocess.run(
        [*base[:-2], "--url", secure.url], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 2 and "error: UNAUTHENTICATED:" in out.stderr, out.stderr


def test_a_token_added_to_the_file_is_accepted_without_a_restart(secure: SecureServer, certs: Certs) -> None:
    assert secure.env is not None
    tokens = Path(secure.env["FEATURESTORE_AUTH__TOKENS_FILE"])
    rotated = "rotated-token-31b8"
    tokens.write_text(tokens.read_text() + f"{rotated} read\n")
    context = certs.client_context()
    wait_until(
        lambda: call(secure.url + "/v1/feature/join", context, JOIN, rotated)[0] == 200,
        30, "the server to re-read its tokens file",
    )  # fmt: skip
    assert call(secure.url + "/v1/feature/join", context, JOIN, READ)[0] == 200  # the old one still works


@pytest.fixture(scope="module")
def mutual(certs: Certs, test_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureServer]:
    work = tmp_path_factory.mktemp("mtls")
    tls = f"tls: {{cert_file: {certs.cert}, key_file: {certs.key}, client_ca_file: {certs.ca}}}\n"
    proc = SecureServer(
        ["--config", str(write_config(work, tls)), "--definitions", str(test_repo)], {}, work / "server.log"
    ).start()
    yield proc
    proc.stop()


def test_mutual_tls_admits_only_clients_with_a_certificate_of_the_ca(
    mutual: SecureServer, certs: Certs
) -> None:
    status, _, _ = call(mutual.url + "/v1/feature/join", certs.client_context(with_client_cert=True), JOIN)
    assert status == 200
    with pytest.raises((urllib.error.URLError, ssl.SSLError, ConnectionError)):
        call(mutual.url + "/v1/feature/join", certs.client_context(), JOIN)
    tls = {"private_key": certs.client_key.read_bytes(), "certificate_chain": certs.client_cert.read_bytes()}
    assert grpc_join(mutual.grpc_target, certs, None, **tls).metadata.feature_names == ["user_id", "age"]
    with pytest.raises(grpc.RpcError) as refused:
        grpc_join(mutual.grpc_target, certs, None)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


@pytest.mark.parametrize("bad", ["client_ca_file", "cert_file"])
def test_a_tls_file_without_pem_fails_the_start_in_one_line_naming_it(
    bad: str, certs: Certs, test_repo: Path, tmp_path: Path
) -> None:
    """A garbage client CA got to grpc, which only said 'Failed to bind to address' in a
    traceback."""
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    files = {"cert_file": str(certs.cert), "key_file": str(certs.key), "client_ca_file": str(certs.ca)}
    files[bad] = str(garbage)
    env = {f"FEATURESTORE_TLS__{k.upper()}": v for k, v in files.items()}
    out = subprocess.run(
        [sys.executable, "-m", "featurestore.cli", "serve", "--config", str(write_config(tmp_path)),
         "--definitions", str(test_repo)],
        env={**os.environ, **env}, capture_output=True, text=True, timeout=120, cwd=ROOT,
    )  # fmt: skip
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    [line] = [x for x in out.stderr.splitlines() if x.startswith("error: ")]
    assert line.startswith("error: FAILED_PRECONDITION: tls.") and bad.split("_")[0] in line
