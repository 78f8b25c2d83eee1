"""The garbage collector in a serving process (featurestore/collector.py): its serving
thresholds, and every collection timed into featurestore_gc_pause_seconds."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest
from prometheus_client import REGISTRY

from featurestore import collector


def collections(generation: int) -> float:
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
    try:
        before = [collections(g) for g in range(3)]
        gc.collect(0)
        gc.collect(2)
        assert [collections(g) - b for g, b in enumerate(before)] == [1, 0, 1]
    finally:
        collector.unwatch(meter)
    assert meter not in gc.callbacks
    gc.collect(0)
    assert collections(0) == before[0] + 1  # no longer counted


def test_every_generation_has_its_series_before_its_first_collection() -> None:
    meter = collector.watch()
    collector.unwatch(meter)
    for g in range(3):
        assert (
            REGISTRY.get_sample_value("featurestore_gc_pause_seconds_count", {"generation": str(g)})
            is not None
        )


def test_serving_freezes_the_heap_and_collects_young_objects_every_twenty_thousand(restored: None) -> None:
    gc.unfreeze()
    collector.serve()
    assert gc.get_threshold() == collector.THRESHOLDS == (20_000, 10, 10)
    assert gc.get_freeze_count() > 0
