"""The demo's banner prints commands that work as printed against the server it runs
(review s58 finding 9)."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from tests.security import SecureServer, make_certs
from tests.support import ROOT, ServerProcess, http_get, wait_until

# `featurestore ...` as the banner prints it, run from this checkout
FEATURESTORE = [sys.executable, "-m", "featurestore.cli"]


def banner(proc: ServerProcess) -> str:
    wait_until(lambda: "Ctrl-C stops it." in proc.read_log(), 10, "the demo banner")
    text = proc.read_log()
    return text[text.index("featurestore demo is up") : text.index("Ctrl-C stops it.")]


def commands(text: str, files: dict[str, str], token: str) -> list[list[str]]:
    """The banner's command lines (curl's continues on the next line), split as a shell
    would (``$(cat TOKEN_FILE)``: ``token``), with `featurestore` run from this checkout
    and each placeholder file of ``files`` by its path."""
    out = []
    for line in text.replace("\\\n", " ").splitlines():
        if not line.startswith("  "):  # the title, not a command
            continue
        words = [
            files.get(w, w) for w in shlex.split(line.replace("$(cat TOKEN_FILE)", token), comments=True)
        ]
        if words and words[0] == "curl":
            out.append(words)
        elif words and words[0] == "featurestore":
            out.append(FEATURESTORE + words[1:])
    return out


def run(argv: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=ROOT)


def test_the_demo_banner_with_tls_and_tokens_prints_https_the_admin_metrics_port_and_joins_that_run_as_printed(
    demo_dir: Path, tmp_path: Path
) -> None:
    certs = make_certs(tmp_path / "certs")
    shutil.copytree(demo_dir, tmp_path / "data")
    token = "demo-banner-token-0123456789"
    (tmp_path / "token").write_text(token + "\n")
    env = {
        "FEATURESTORE_TLS__CERT_FILE": str(certs.cert),
        "FEATURESTORE_TLS__KEY_FILE": str(certs.key),
        "FEATURESTORE_AUTH__TOKENS": f"{token} read",
    }
    args = ["--demo", "--no-clickhouse", "--data-dir", str(tmp_path / "data")]
    proc = SecureServer(args, env, tmp_path / "server.log").start(timeout=90)
    try:
        text = banner(proc)
        assert f"metrics: {proc.admin_url}/metrics" in text
        assert "# stores: memory\n" in text and "ClickHouse" not in text
        assert f"CA.pem: the CA that signed tls.cert_file ({certs.cert})" in text
        printed = commands(text, {"CA.pem": str(certs.ca), "TOKEN_FILE": str(tmp_path / "token")}, token)
        assert len(printed) == 3  # curl, join over HTTPS, join over gRPC
        curl = run(printed[0])
        assert curl.returncode == 0, curl.stderr
        assert json.loads(curl.stdout)["results"][1]["values"] == [71, 41]
        for join in printed[1:]:
            out = run(join)
            assert out.returncode == 0, (join, out.stderr)
            assert re.search(r"^txn_count_90d\s+7\s+PRESENT", out.stdout, re.M), out.stdout
        [metrics] = re.findall(r"metrics: (\S+)", text)
        status, body = http_get(metrics)
        assert status == 200 and b"featurestore_" in body
    finally:
        assert proc.stop() == 0
