"""The garbage collector in a serving process (featurestore/collector.py): its serving
thresholds, and every collection timed into featurestore_gc_pause_seconds."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from featurestore import collector, metrics

ROOT = Path(__file__).resolve().parents[2]


def collections(generation: int) -> float:
    metrics.flush()
    labels = {"generation": str(generation)}
    return REGISTRY.get_sample_value("featurestore_gc_pause_seconds_count", labels) or 0.0


@pytest.fixture
def restored() -> Iterator[None]:
    thresholds = gc.get_threshold()
    try:
        yield
    finally:
        gc.unfreeze()
        gc.set_threshold(*thresholds)


def test_each_collection_is_timed_under_its_generation_until_unwatched() -> None:
    meter = collector.watch()
    gc.disable()  # only the collections below (reading the registry allocates: it may collect)
    try:
        before = [collections(g) for g in range(3)]
        gc.collect(0)
        gc.collect(2)
        assert [collections(g) - b for g, b in enumerate(before)] == [1, 0, 1]
        collector.unwatch(meter)
        assert meter not in gc.callbacks
        gc.collect(0)
        assert collections(0) == before[0] + 1  # no longer counted
    finally:
        gc.enable()
        collector.unwatch(meter)


def test_serving_freezes_the_heap_and_collects_young_objects_every_twenty_thousand(restored: None) -> None:
    gc.unfreeze()
    collector.serve()
    assert gc.get_threshold() == collector.THRESHOLDS == (20_000, 10, 10)
    assert gc.get_freeze_count() > 0


def test_a_collection_inside_prometheus_clients_lock_does_not_hang_a_worker(tmp_path: Path) -> None:
    """With several workers prometheus_client holds one lock while it makes a labelled
    series, and a collection can start there: the pause must not wait on that lock."""
    script = textwrap.dedent(
        """
        import gc
        from featurestore import collector, metrics
        meter = collector.watch()
        gc.set_threshold(1)  # a collection at every allocation: inside the lock too
        for i in range(50):
            metrics.VIEW_READ_DURATION.labels(f"view{i}", "store").observe(0.001)
        gc.set_threshold(700)
        metrics.flush()
        print("served")
        """
    )
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert done.returncode == 0 and done.stdout.strip() == "served", done.stderr


def test_every_generation_has_its_series_before_its_first_collection() -> None:
    """In a fresh process (here no earlier test made the series): 0, not absent."""
    script = textwrap.dedent(
        """
        import gc
        gc.disable()
        from prometheus_client import REGISTRY
        from featurestore import collector, metrics
        collector.watch()
        metrics.flush()
        name = "featurestore_gc_pause_seconds_count"
        print([REGISTRY.get_sample_value(name, {"generation": str(g)}) for g in range(3)])
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert done.returncode == 0 and done.stdout.strip() == "[0.0, 0.0, 0.0]", done.stderr
