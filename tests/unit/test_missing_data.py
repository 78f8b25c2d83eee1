"""What a store reports about views whose data is gone (``sources/missing.py``): findings
are about one served data version, and the gauge follows them."""

from __future__ import annotations

import uuid

from prometheus_client import REGISTRY

from featurestore.sources.missing import MissingData


def gauge(store: str, view: str) -> float | None:
    return REGISTRY.get_sample_value("featurestore_view_data_missing", {"store": store, "view": view})


def fresh() -> tuple[str, MissingData]:
    store = f"s{uuid.uuid4().hex[:6]}"  # the gauge is process-wide: a store name per test
    return store, MissingData(store)


def test_a_served_view_found_missing_is_reported_with_its_reason_until_its_data_is_back() -> None:
    store, missing = fresh()
    missing.serving({"a": 3, "b": 0})
    assert gauge(store, "a") == 0 and gauge(store, "b") == 0  # the series exist from the start
    assert missing.checked() == [("a", 3)]  # version 0 may legitimately hold nothing
    missing.found_missing("a", 3, "marker gone")
    missing.found_missing("a", 3, "a second finding changes nothing")
    assert dict(missing.report) == {"a": "marker gone"} and gauge(store, "a") == 1
    missing.found_present([("a", 3)])
    assert dict(missing.report) == {} and gauge(store, "a") == 0


def test_findings_about_a_version_not_served_are_ignored() -> None:
    _, missing = fresh()
    missing.serving({"a": 3})
    missing.found_missing("a", 2, "a request still on the previous state")
    missing.found_missing("zzz", 3, "a view this store does not serve")
    assert dict(missing.report) == {}
    missing.found_missing("a", 3, "gone")
    missing.found_present([("a", 2)])  # the old version being there says nothing
    assert dict(missing.report) == {"a": "gone"}


def test_moving_a_view_to_another_version_forgets_what_was_found_about_the_old_one() -> None:
    store, missing = fresh()
    missing.serving({"a": 3, "b": 5})
    missing.found_missing("a", 3, "gone")
    missing.found_missing("b", 5, "gone too")
    missing.serving({"a": 4})  # a re-materialized, b no longer served
    assert dict(missing.report) == {} and gauge(store, "a") == 0 and gauge(store, "b") == 0
    assert missing.checked() == [("a", 4)]
