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


def test_prometheus_config_and_its_rule_files_are_valid(promtool: str) -> None:
    """deploy/prometheus/prometheus.yml as the compose Prometheus loads it: scrape jobs,
    rule files and the Alertmanager it alerts."""
    out = subprocess.run(
        [promtool, "check", "config", str(PROM / "prometheus.yml")], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "featurestore.rules.yml" in out.stdout + out.stderr


def test_alertmanager_config_is_valid() -> None:
    amtool = shutil.which("amtool")
    if amtool is None:
        pytest.fail("amtool is missing: `make test` installs Debian's prometheus-alertmanager")
    config = ROOT / "deploy" / "alertmanager" / "alertmanager.yml"
    out = subprocess.run([amtool, "check-config", str(config)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
