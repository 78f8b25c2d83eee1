"""FeatureSkewCheckFailing's clock under the supervisor: a restarted worker that runs the
consistency schedule neither forgets the last completion nor starts the clock again (the
gauges keep a dead worker's value: multiprocess modes max and min, folded into the archive
of metrics_files.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from featurestore.metrics_files import archive_dead_worker

# One life of the worker that runs the schedule: its start, and a completion if given.
WORKER = """
import sys
from featurestore.quality import metrics
started, completed = float(sys.argv[1]), sys.argv[2]
metrics.CONSISTENCY_STARTED.labels("v").set(started)
metrics.CONSISTENCY_INTERVAL.labels("v").set(3600)
if completed:
    metrics.CONSISTENCY_COMPLETED.labels("v").set(float(completed))
"""


def life(metrics_dir: Path, started: float, completed: str = "") -> None:
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}
    proc = subprocess.Popen([sys.executable, "-c", WORKER, str(started), completed], env=env)
    assert proc.wait(timeout=120) == 0
    archive_dead_worker(proc.pid, str(metrics_dir))  # as the supervisor does when it dies


def scraped(metrics_dir: Path) -> dict[str, float]:
    registry = CollectorRegistry()
    MultiProcessCollector(registry, str(metrics_dir))  # type: ignore[no-untyped-call]
    text = generate_latest(registry).decode()
    return {
        s.name: s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.labels.get("view") == "v"
    }


def test_a_restarted_schedule_worker_keeps_the_first_start_and_the_last_completion(tmp_path: Path) -> None:
    life(tmp_path, started=100.0, completed="200")  # checks completed, then the worker died
    life(tmp_path, started=300.0)  # its successor: started again, no check completed yet
    values = scraped(tmp_path)
    assert values["featurestore_consistency_schedule_started_timestamp_seconds"] == 100.0
    assert values["featurestore_consistency_last_completed_timestamp_seconds"] == 200.0
    assert "featurestore_consistency_interval_seconds" not in values  # (live: left with its worker)
    # folded into one archive file per mode, as counters are: no file per dead worker
    gauges = sorted(f.name for f in tmp_path.glob("gauge_*.db"))
    assert gauges == ["gauge_max_archive.db", "gauge_min_archive.db"]
