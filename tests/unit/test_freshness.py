"""The freshness gauges (featurestore/freshness.py): what a server's scrape says about
each view's materialized data, from the registry state it last read."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest

from featurestore.definitions.snapshot import RegistrySnapshot, new_snapshot
from featurestore.freshness import Freshness
from featurestore.model import DType, Entity, Feature, FeatureView, make_definitions
from featurestore.registry.base import Watermark

USER = Entity("user_id", DType.INT64)


def snapshot(*views: tuple[str, int | None]) -> RegistrySnapshot:
    made = [
        FeatureView(name, (USER,), (Feature("f", DType.FLOAT64),), ttl_seconds=ttl) for name, ttl in views
    ]
    return new_snapshot(make_definitions("p", [USER], made, []), 1)


def scrape(freshness: Freshness) -> str:
    registry = CollectorRegistry()
    registry.register(freshness)
    return generate_latest(registry).decode()


def test_a_view_reports_the_newest_event_time_loaded_into_its_served_version_and_its_max_age() -> None:
    f = Freshness()
    f.update(
        [snapshot(("a", 86_400), ("b", None))], {"a": 3, "b": 2}, {"a": Watermark(3, 1_700_000_000_500_000)}
    )
    text = scrape(f)
    assert 'featurestore_view_loaded_event_timestamp_seconds{view="a"} 1.7000000005e+09' in text
    assert 'featurestore_view_max_age_seconds{view="a"} 86400.0' in text
    assert 'view="b"' not in text  # no watermark, no ttl: nothing to say


def test_a_watermark_of_a_version_no_longer_served_or_of_no_version_says_nothing() -> None:
    f = Freshness()
    marks = {"a": Watermark(2, 1_700_000_000_000_000), "b": Watermark(0, 1_700_000_000_000_000)}
    f.update([snapshot(("a", 60), ("b", 60))], {"a": 3}, marks)  # a: a full run replaced 2; b: version 0
    text = scrape(f)
    assert "featurestore_view_loaded_event_timestamp_seconds{" not in text
    assert 'featurestore_view_max_age_seconds{view="a"} 60.0' in text


def test_a_view_dropped_from_the_definitions_leaves_the_scrape() -> None:
    f = Freshness()
    f.update(
        [snapshot(("a", 60), ("b", 60))],
        {"a": 1, "b": 1},
        {"a": Watermark(1, 10**15), "b": Watermark(1, 10**15)},
    )
    f.update(
        [snapshot(("a", 60))], {"a": 1, "b": 1}, {"a": Watermark(1, 2 * 10**15), "b": Watermark(1, 10**15)}
    )
    text = scrape(f)
    assert (
        'view="b"' not in text and 'featurestore_view_loaded_event_timestamp_seconds{view="a"} 2e+09' in text
    )


def test_a_view_whose_canary_changes_its_max_age_shows_the_shorter_one() -> None:
    f = Freshness()
    f.update([snapshot(("a", 600), ("b", None)), snapshot(("a", 60), ("b", 30))], {}, {})
    text = scrape(f)
    assert 'featurestore_view_max_age_seconds{view="a"} 60.0' in text
    assert 'featurestore_view_max_age_seconds{view="b"} 30.0' in text


def test_a_process_that_never_read_a_registry_reports_no_family() -> None:
    assert scrape(Freshness()) == ""
