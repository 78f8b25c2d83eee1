"""Consistency classes from constructed cases (the demo scenario is
tests/integration/test_quality_consistency.py)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

import pytest

from featurestore.model import DType, Entity, Feature, FeatureView, Status
from featurestore.quality.consistency import Side, check, classify, same_value, sample_keys
from featurestore.sources.base import EntityKey

V = FeatureView(
    "v",
    (Entity("user_id", DType.INT64),),
    (Feature("x", DType.FLOAT64), Feature("tier", DType.STRING), Feature("vec", DType.FLOAT32_VECTOR)),
)
ROW = (1.5, "plus", [0.1, 0.2])


@pytest.mark.parametrize(
    ("online", "offline", "expected"),
    [
        (Side(10, ROW), Side(10, ROW), ("consistent", None)),
        (Side(9, ROW), Side(10, ROW), ("stale", None)),
        (Side(11, (0.0, "free", [1.0])), Side(10, ROW), ("online_newer", None)),
        (Side(10, (1.5, "pro", [0.1, 0.2])), Side(10, ROW), ("conflict", "tier")),
        (None, Side(10, ROW), ("missing_online", None)),
        (Side(10, ROW), None, ("missing_offline", None)),
        (Side(10, None), Side(10, ROW), ("consistent", None)),  # served OUTSIDE_MAX_AGE: times agree
        (None, None, ("missing_online", None)),
    ],
)
def test_each_key_gets_exactly_one_class(
    online: Side | None, offline: Side | None, expected: tuple[str, str | None]
) -> None:
    assert classify(V, online, offline) == expected


def test_values_compare_by_type() -> None:
    assert same_value(math.nan, math.nan, DType.FLOAT64)
    assert same_value([0.1, 0.2], [0.10000000149011612, 0.20000000298023224], DType.FLOAT32_VECTOR)
    assert not same_value(1.0, 1.0001, DType.FLOAT64)
    assert not same_value(None, 0, DType.INT64) and same_value(None, None, DType.STRING)


def test_the_key_sample_is_seeded_and_adds_named_keys() -> None:
    offline: dict[EntityKey, Side] = {k: Side(1, ROW) for k in range(1000)}
    a, b = sample_keys(offline, 50, [5000], seed=1), sample_keys(offline, 50, [5000], seed=1)
    assert a == b and len(a) == 51 and a[-1] == 5000 and len(set(a)) == 51


async def test_the_report_counts_every_class_and_keeps_examples() -> None:
    offline: dict[EntityKey, Side] = {
        1: Side(10, ROW),
        2: Side(10, ROW),
        3: Side(10, ROW),
        4: Side(10, ROW),
        5: Side(10, ROW),
    }
    online: dict[EntityKey, Side] = {1: Side(10, ROW), 2: Side(9, ROW), 3: Side(12, ROW), 4: Side(10, (2.0, "plus", [0.1, 0.2])),
              6: Side(10, ROW)}  # fmt: skip

    async def read(keys: Sequence[EntityKey]) -> list[Side | None]:
        return [online.get(k) for k in keys]

    report = await check(V, offline, [1, 2, 3, 4, 5, 6], read)
    assert report.checked == 6 and report.mismatches == 3  # stale, conflict, missing_online
    assert report.counts == {"consistent": 1, "stale": 1, "online_newer": 1, "conflict": 1,
                             "missing_online": 1, "missing_offline": 1, "pending": 0, "not_loaded": 0}  # fmt: skip
    assert [e["class"] for e in report.examples] == ["stale", "online_newer", "conflict", "missing_online",
                                                      "missing_offline"]  # fmt: skip
    assert report.examples[2] == {"key": 4, "class": "conflict", "online_event_time_us": 10,
                                  "offline_event_time_us": 10, "feature": "x", "online": 2.0, "offline": 1.5}  # fmt: skip
    assert not report.passed(0.45) and report.passed(3 / 6)
    assert set(report.to_dict()) == {"view", "checked", "consistent", "stale", "online_newer", "conflict",
                                     "missing_online", "missing_offline", "pending", "not_loaded", "examples"}  # fmt: skip


def test_vectors_with_nan_in_the_same_place_are_the_same_value() -> None:
    nan = float("nan")
    assert same_value([nan, 0.5], [nan, 0.5], DType.FLOAT32_VECTOR)
    assert not same_value([nan, 0.5], [0.0, 0.5], DType.FLOAT32_VECTOR)


def test_a_vector_with_a_null_element_is_compared_not_an_error() -> None:
    """A null element (served as written by another tool) raised TypeError: the whole
    scheduled check erred instead of reporting the conflict (review s54)."""
    assert same_value([1.0, None], [1.0, None], DType.FLOAT32_VECTOR)
    assert not same_value([1.0, 2.0], [1.0, None], DType.FLOAT32_VECTOR)
    assert not same_value([None, 2.0], [1.0, 2.0], DType.FLOAT32_VECTOR)


async def test_a_key_whose_served_vector_has_a_null_element_is_a_conflict() -> None:
    view = FeatureView("vecs", (Entity("user_id", DType.INT64),), (Feature("emb", DType.FLOAT32_VECTOR),))

    async def online(keys: Sequence[EntityKey]) -> list[Side | None]:
        return [Side(5, ([1.0, None],)) for _ in keys]

    report = await check(view, {1: Side(5, ([1.0, 2.0],))}, [1], online)
    assert report.counts["conflict"] == 1 and report.examples[0]["feature"] == "emb"


async def test_a_conflict_with_a_nan_value_is_reported_as_strict_json() -> None:
    import json

    from featurestore.quality.consistency import Report

    offline: dict[EntityKey, Side] = {7: Side(10, ROW)}

    async def read(keys: Sequence[EntityKey]) -> list[Side | None]:
        return [Side(10, (float("nan"), "plus", [0.1, float("inf")]))]

    report: Report = await check(V, offline, [7], read)
    assert report.counts["conflict"] == 1

    def refuse(name: str) -> None:
        raise ValueError(f"not JSON: {name}")

    doc = json.loads(json.dumps(report.to_dict()), parse_constant=refuse)
    assert doc["examples"][0]["feature"] == "x" and doc["examples"][0]["online"] == "nan"


@pytest.mark.parametrize(
    ("online", "offline", "expected"),
    [
        (None, Side(10, ROW), "missing_online"),  # loaded by the served version, and lost
        (None, Side(11, ROW), "pending"),  # added to the batch source since: the next run loads it
        (Side(9, ROW), Side(11, ROW), "pending"),
        (Side(9, ROW), Side(10, ROW), "stale"),
        (Side(11, ROW), Side(11, ROW), "consistent"),  # pushed already: no longer pending
        (Side(12, ROW), Side(11, ROW), "online_newer"),
    ],
)
def test_offline_rows_newer_than_the_served_versions_watermark_are_pending(
    online: Side | None, offline: Side | None, expected: str
) -> None:
    assert classify(V, online, offline, watermark_us=10)[0] == expected


async def test_keys_missing_online_are_mismatches_unless_pending_or_absent_on_both_sides() -> None:
    """Every sampled key gone from the online store passed at max_mismatch 0.0; rows added
    to the batch source after the last materialization failed it as stale."""
    offline: dict[EntityKey, Side] = {k: Side(10, ROW) for k in range(100)}
    offline |= {k: Side(20, ROW) for k in range(100, 150)}  # newer than the watermark

    async def nothing(keys: Sequence[EntityKey]) -> list[Side | None]:
        return [None] * len(keys)

    report = await check(V, offline, [*range(150), 999], nothing, watermark_us=10)
    assert (report.counts["missing_online"], report.counts["pending"]) == (101, 50)
    assert report.mismatches == 100 and not report.passed(0.5)  # 999: neither side has it

    async def loaded(keys: Sequence[EntityKey]) -> list[Side | None]:
        return [Side(10, ROW) for _ in keys]

    report = await check(V, offline, list(range(150)), loaded, watermark_us=10)
    assert (report.counts["consistent"], report.counts["pending"], report.mismatches) == (100, 50, 0)
    report = await check(V, offline, list(range(150)), loaded)  # watermark unknown: nothing pending
    assert report.counts["stale"] == 50 and not report.passed(0.0)


@pytest.mark.parametrize(
    ("online", "offline", "expected"),
    [
        (None, Side(4, ROW), "not_loaded"),  # older than the run's --start: never loaded
        (Side(3, ROW), Side(4, ROW), "not_loaded"),  # an older push; the run did not load the row
        (None, Side(5, ROW), "missing_online"),  # at the start (inclusive): loaded, and lost
        (Side(4, ROW), Side(4, ROW), "consistent"),
        (Side(6, ROW), Side(4, ROW), "online_newer"),
        (None, Side(11, ROW), "pending"),
    ],
)
def test_offline_rows_older_than_where_the_served_versions_load_began_are_not_loaded(
    online: Side | None, offline: Side | None, expected: str
) -> None:
    assert classify(V, online, offline, watermark_us=10, start_us=5)[0] == expected


async def test_keys_a_ranged_materialization_never_loaded_are_counted_apart_and_are_no_mismatch() -> None:
    offline: dict[EntityKey, Side] = {k: Side(4, ROW) for k in range(30)}
    offline |= {k: Side(10, ROW) for k in range(30, 100)}

    async def nothing(keys: Sequence[EntityKey]) -> list[Side | None]:
        return [None] * len(keys)

    report = await check(V, offline, list(range(100)), nothing, watermark_us=10, start_us=5)
    assert (report.counts["not_loaded"], report.counts["missing_online"], report.mismatches) == (30, 70, 70)
    assert report.to_dict()["not_loaded"] == 30
    report = await check(V, offline, list(range(100)), nothing, watermark_us=10)  # no start recorded
    assert report.counts["missing_online"] == 100 and report.counts["not_loaded"] == 0


class _Refusing:
    """A join API whose server takes at most ``limit`` rows a join (the real one is
    tests/integration/test_quality_consistency.py); ``details``: its refusal names the
    limit (HTTP) or not (gRPC). Every key it takes is NOT_FOUND."""

    def __init__(self, limit: int, details: bool) -> None:
        self.limit, self.details = limit, details
        self.sizes: list[int] = []

    async def join(self, entities: dict[str, list[Any]], refs: list[str], **_: Any) -> dict[str, Any]:
        from featurestore.client.errors import ResourceExhaustedError

        n = len(entities["user_id"])
        self.sizes.append(n)
        if n > self.limit:
            details = [{"rows": n, "limit": self.limit}] if self.details else None
            raise ResourceExhaustedError(f"{n} entity rows exceed the limit", details=details)
        column = SimpleNamespace(
            statuses=[Status.NOT_FOUND] * n, event_timestamps=[None] * n, values=[None] * n
        )
        return {f"v__{f.name}": column for f in V.features}


@pytest.mark.parametrize(("details", "sizes"), [(True, [20, 7, 7, 6, 5]), (False, [20, 10, 5, 5, 5, 5, 5])])
async def test_the_url_reader_splits_reads_into_joins_the_servers_row_limit_takes(
    details: bool, sizes: list[int]
) -> None:
    from featurestore.cli.check import http_reader

    server = _Refusing(limit=7, details=details)
    read = http_reader(server, V)
    assert await read(list(range(20))) == [None] * 20
    assert await read(list(range(20, 25))) == [None] * 5  # the size learnt is kept
    assert server.sizes == sizes


async def test_the_url_reader_does_not_split_a_join_the_server_shed() -> None:
    from featurestore.cli.check import http_reader
    from featurestore.client.errors import ResourceExhaustedError

    class Shedding(_Refusing):
        async def join(self, entities: dict[str, list[Any]], refs: list[str], **_: Any) -> dict[str, Any]:
            raise ResourceExhaustedError("overloaded", retry_after=1.0)

    with pytest.raises(ResourceExhaustedError):
        await http_reader(Shedding(limit=7, details=True), V)(list(range(20)))
