"""``featurestore_lineage_graph_up`` is exported only by a process that writes the graph:
a serving process imports lineage.metrics for its emitter, and a gauge without labels
exported a 0 there that nothing ever set, so LineageGraphUnavailable paged on every
healthy server (review s54 #2)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.support import ROOT

# What a server's /metrics holds once its lineage emitter is built (factories import the
# emitter, which imports lineage.metrics), with one process or with worker processes.
SERVER = """
import os, sys
if sys.argv[1] == "worker":
    import featurestore.emitter, featurestore.factories
    from featurestore import metrics
    metrics.flush()
    raise SystemExit
if sys.argv[1] == "workers":
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = sys.argv[2]
import featurestore.emitter, featurestore.factories  # noqa: F401
from featurestore import metrics
body, _ = metrics.exposition()
print(body.decode())
"""


def server_metrics(*args: str) -> str:
    run = subprocess.run(
        [sys.executable, "-c", SERVER, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return run.stdout


def samples(body: str, name: str) -> list[str]:
    return [line for line in body.splitlines() if line.startswith(name)]


def test_a_serving_process_exports_no_lineage_graph_up() -> None:
    body = server_metrics("single")
    assert "featurestore_lineage_sink_up" in body or "featurestore_lineage_served_total" in body
    assert samples(body, "featurestore_lineage_graph_up") == []


def test_serving_workers_export_no_lineage_graph_up(tmp_path: Path) -> None:
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    subprocess.run([sys.executable, "-c", SERVER, "worker"], cwd=ROOT, env=env, check=True, timeout=60)
    assert list(tmp_path.iterdir())  # the worker wrote its metrics files
    assert samples(server_metrics("workers", str(tmp_path)), "featurestore_lineage_graph_up") == []
