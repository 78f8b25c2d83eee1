"""deploy/docker-compose.yml against a Compose implementation's own schema: an unknown or
misspelt key (`depend_on`, `healthchek`) fails here, which the link checks in
tests/unit/test_deploy_compose.py cannot see. The only Compose this machine can install is
Debian's docker-compose 1.29, whose `config` validates without a container engine; it
predates the top-level `name`, so that one line is left out of the copy it checks."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support import ROOT

COMPOSE = ROOT / "deploy" / "docker-compose.yml"


@pytest.fixture(scope="module")
def docker_compose() -> str:
    path = shutil.which("docker-compose")
    if path is None:
        pytest.fail("docker-compose is missing: `make test` installs Debian's docker-compose")
    return path


def check(docker_compose: str, text: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    copy = tmp_path / "docker-compose.yml"
    copy.write_text("\n".join(line for line in text.splitlines() if not line.startswith("name:")))
    return subprocess.run(
        [docker_compose, "--project-directory", str(COMPOSE.parent), "-f", str(copy), "config", "--quiet"],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_compose_file_passes_the_compose_schema(docker_compose: str, tmp_path: Path) -> None:
    out = check(docker_compose, COMPOSE.read_text(), tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr


def test_a_misspelt_key_fails_the_compose_schema(docker_compose: str, tmp_path: Path) -> None:
    out = check(docker_compose, COMPOSE.read_text().replace("healthcheck:", "healthchek:", 1), tmp_path)
    assert out.returncode != 0
    assert "healthchek" in out.stdout + out.stderr
