"""Alert and recording rules in deploy/prometheus, checked and unit-tested by promtool."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from tests.support import ROOT

PROM = ROOT / "deploy" / "prometheus"


@pytest.fixture(scope="module")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool is missing: `make test` installs Debian's prometheus package")
    return path


def test_rules_are_valid(promtool: str) -> None:
    out = subprocess.run(
        [promtool, "check", "rules", *map(str, PROM.glob("*.rules.yml"))], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_rule_unit_tests_pass(promtool: str) -> None:
    tests = sorted(str(p.relative_to(PROM)) for p in (PROM / "tests").glob("*.yml"))
    assert tests
    out = subprocess.run([promtool, "test", "rules", *tests], cwd=PROM, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
