"""The core install (``pip install featurestore``, no graphql extra) serves the demo and
the defaults, with /graphql off (review s58 finding 8)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from tests.support import ServerProcess, http_get

# The core install: strawberry (the graphql extra) cannot be imported, the way Python
# reports a missing package (as tests/unit/test_extras.py simulates one).
WITHOUT_GRAPHQL = "import runpy, sys; sys.modules['strawberry'] = None; runpy.run_module('featurestore.cli', run_name='__main__')"


class CoreInstallServer(ServerProcess):
    def command(self) -> list[str]:
        return [sys.executable, "-c", WITHOUT_GRAPHQL, *super().command()[3:]]


def test_the_core_install_without_the_graphql_extra_serves_the_demo_with_graphql_off(
    demo_dir: Path, tmp_path: Path
) -> None:
    shutil.copytree(demo_dir, tmp_path / "data")
    args = ["--demo", "--no-clickhouse", "--data-dir", str(tmp_path / "data")]
    proc = CoreInstallServer(args, log_path=tmp_path / "server.log").start(timeout=90)
    try:
        status, answer = proc.join({"entities": {"user_id": [17]}, "feature_service": "risk_v1"})
        assert status == 200, answer
        assert http_get(proc.url + "/graphql")[0] == 404
        assert "needs the 'graphql' extra" not in proc.read_log()
    finally:
        assert proc.stop() == 0
