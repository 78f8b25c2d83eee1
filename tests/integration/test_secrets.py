"""Secrets on a real server: a Redis store over TLS with an ACL user whose password
comes from a file named in the environment, and no secret value in the server's log,
its answers (/readyz, /v1/registry, /metrics, errors) or the CLI's output."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.security import Certs, SecureRedisServer, SecureServer, call, make_certs
from tests.support import REDIS_CONNECT_MS, ROOT, http_get, wait_until

TOKEN = "tok-read-write-admin-8c41d2"
BOLT_PASSWORD = "bolt-pw-unused-2f7a9e"
WRONG_PASSWORD = "wrong-redis-pw-61b0c3"


@dataclass
class Stack:
    certs: Certs
    redis: SecureRedisServer
    server: SecureServer
    materialize_output: str

    def secrets(self) -> list[str]:
        return [SecureRedisServer.PASSWORD, WRONG_PASSWORD, BOLT_PASSWORD, TOKEN]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, test_repo: Path, demo_dir: Path) -> Iterator[Stack]:
    work = tmp_path_factory.mktemp("secrets")
    certs = make_certs(work / "certs")
    files = {"redis-pw": SecureRedisServer.PASSWORD, "wrong-pw": WRONG_PASSWORD, "bolt-pw": BOLT_PASSWORD,
             "tokens": f"{TOKEN}\n"}  # fmt: skip
    for name, text in files.items():
        (work / name).write_text(text + "\n")
    redis = SecureRedisServer(work / "redis", certs).start()
    store = (
        f"{{kind: redis, url: '{redis.url}', username: {redis.USER}, ssl_ca_file: '{certs.ca}', "
        f"health_interval_ms: 100, connect_timeout_ms: {REDIS_CONNECT_MS}}}"
    )
    config = work / "config.yaml"
    config.write_text(
        f"registry: {{path: {work / 'registry'}, definitions: {test_repo}}}\n"
        f"stores:\n  default: {store}\n  broken: {store}\n  local: {{kind: memory}}\n"
        "limits: {deadline_ms: 2000}\n"
    )
    env = {
        "FEATURESTORE_STORES__DEFAULT__PASSWORD_FILE": str(work / "redis-pw"),
        "FEATURESTORE_STORES__BROKEN__PASSWORD_FILE": str(work / "wrong-pw"),
        "FEATURESTORE_LINEAGE__BOLT__PASSWORD_FILE": str(work / "bolt-pw"),
        "FEATURESTORE_AUTH__TOKENS_FILE": str(work / "tokens"),
        "FEATURESTORE_TLS__CERT_FILE": str(certs.cert),
        "FEATURESTORE_TLS__KEY_FILE": str(certs.key),
    }
    try:
        out = subprocess.run(
            [sys.executable, "-m", "featurestore.cli", "materialize", "--config", str(config), "--view",
             "user_profile", "--source", str(demo_dir / "users.parquet"), "--grace-seconds", "30"],
            capture_output=True, text=True, timeout=300, cwd=ROOT, env={**os.environ, **env},
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
        server = SecureServer(["--config", str(config), "--no-apply"], env, work / "server.log").start()
    except BaseException:
        redis.stop()
        raise
    yield Stack(certs, redis, server, out.stdout + out.stderr)
    server.stop()
    redis.stop()


def test_a_redis_store_over_tls_with_an_acl_user_serves_joins(stack: Stack) -> None:
    body = {"entities": {"user_id": [17]}, "features": ["user_profile:age"]}
    status, doc, _ = call(stack.server.url + "/v1/feature/join", stack.certs.client_context(), body, TOKEN)
    assert status == 200 and doc["results"][1] == {
        "values": [71], "statuses": ["PRESENT"], "event_timestamps": [doc["results"][1]["event_timestamps"][0]]
    }  # fmt: skip


def test_a_store_refusing_its_password_is_down_and_says_why_without_the_password(stack: Stack) -> None:
    wait_until(
        lambda: "store broken is down" in http_get(stack.server.admin_url + "/readyz")[1].decode(),
        30, "the store with the wrong password to be reported down",
    )  # fmt: skip


def test_no_secret_appears_in_the_log_the_answers_or_the_cli_output(stack: Stack) -> None:
    url, admin, context = stack.server.url, stack.server.admin_url, stack.certs.client_context()
    seen = [stack.materialize_output]
    for path in ("/readyz", "/metrics", "/healthz"):
        seen.append(http_get(admin + path)[1].decode())
    seen.append(str(call(url + "/v1/registry", context, None, TOKEN)))
    bad = [
        {"entities": {"user_id": [1]}, "features": ["nope:x"]},
        {"entities": {"user_id": ["x", 1]}, "features": ["user_profile:age"]},
        {"entities": {"user_id": [1]}, "features": ["user_profile:age"], "extra": SecureRedisServer.PASSWORD},
    ]
    for body in bad:
        seen.append(str(call(url + "/v1/feature/join", context, body, TOKEN)))
    seen.append(str(call(url + "/v1/feature/join", context, bad[0], WRONG_PASSWORD)))
    seen.append(str(call(url + "/v1/feature/push", context, {"feature_view": "user_profile"}, TOKEN)))
    stack.server.stop()  # the log, to its last line
    seen.append(stack.server.read_log())
    text = "\n".join(seen)
    assert "store broken is down: auth:AuthenticationError" in text  # the log says why
    assert [s for s in stack.secrets() if s in text] == []
