"""Plans (feature resolution) and entity-key handling."""

from __future__ import annotations

import re
from typing import Any

import pytest

from featurestore.definitions.snapshot import new_snapshot
from featurestore.errors import InvalidArgument, LimitExceeded, NotFound
from featurestore.keys import dedupe, validate_entities, view_keys
from featurestore.model import (
    DType,
    Entity,
    Feature,
    FeatureRef,
    FeatureService,
    FeatureView,
    make_definitions,
)
from featurestore.plan import ServingState, entity_clash, resolve

U, ITEM = Entity("user_id", DType.INT64), Entity("item_id", DType.STRING)
UV = FeatureView("uv", (U,), (Feature("a", DType.INT64), Feature("b", DType.FLOAT64)))
IV = FeatureView("iv", (ITEM,), (Feature("a", DType.STRING),))
UI = FeatureView("ui", (U, ITEM), (Feature("s", DType.FLOAT64),))
DEFS = make_definitions(
    "p", [U, ITEM], [UV, IV, UI], [FeatureService("svc", (FeatureRef("iv", "a"), FeatureRef("uv", "b")))]
)


def test_plan_groups_by_view_and_keeps_request_order() -> None:
    plan = resolve(DEFS, ["uv:b", "ui:s", "uv:a"], None, False)
    assert [vp.view.name for vp in plan.views] == ["uv", "ui"]
    assert plan.views[0].features == (1, 0)
    assert [o.name for o in plan.outputs] == ["b", "s", "a"]
    assert [(o.view_slot, o.column_slot) for o in plan.outputs] == [(0, 0), (1, 0), (0, 1)]
    assert plan.entities == {"user_id", "item_id"}


def test_service_plan_and_full_names() -> None:
    plan = resolve(DEFS, [], "svc", True)
    assert [o.name for o in plan.outputs] == ["iv__a", "uv__b"]
    assert plan.service == "svc"


def test_short_name_clash_asks_for_full_names() -> None:
    with pytest.raises(InvalidArgument, match="full_feature_names"):
        resolve(DEFS, ["uv:a", "iv:a"], None, False)
    assert [o.name for o in resolve(DEFS, ["uv:a", "iv:a"], None, True).outputs] == ["uv__a", "iv__a"]


def test_features_whose_full_names_collide_are_refused_without_asking_for_full_names_again() -> None:
    ab = FeatureView("a__b", (U,), (Feature("c", DType.INT64),))
    a = FeatureView("a", (U,), (Feature("b__c", DType.INT64),))
    defs = make_definitions("p", [U], [ab, a], [])
    with pytest.raises(InvalidArgument) as info:
        resolve(defs, ["a__b:c", "a:b__c"], None, True)
    assert info.value.message == (
        "the full names of a__b:c and a:b__c are both 'a__b__c': "
        "join them without full_feature_names (their short names differ), or ask for one of them"
    )
    assert [o.name for o in resolve(defs, ["a__b:c", "a:b__c"], None, False).outputs] == ["c", "b__c"]


def test_an_entity_column_named_as_a_full_feature_name_is_told_to_leave_it_out() -> None:
    plan = resolve(DEFS, ["uv:a"], None, True)
    assert "leave the entity column out" in entity_clash(plan, ["uv__a"]).message
    assert "full_feature_names" not in entity_clash(plan, ["uv__a"]).message
    assert "set full_feature_names" in entity_clash(resolve(DEFS, ["uv:a"], None, False), ["a"]).message


@pytest.mark.parametrize(
    ("features", "service", "exc", "text"),
    [
        (["uv:zz"], None, NotFound, "no feature 'zz'"),
        (["zz:a"], None, NotFound, "unknown feature view 'zz'"),
        (["uva"], None, InvalidArgument, "not a feature reference"),
        (["uv:a:b"], None, InvalidArgument, "not a feature reference"),
        ([], "nope", NotFound, "unknown feature service 'nope'"),
        ([], None, InvalidArgument, "empty request"),
        (["uv:a"], "svc", InvalidArgument, "not both"),
        (["uv:a", "uv:a"], None, InvalidArgument, "requested twice"),
    ],
)
def test_plan_errors(features: list[str], service: str | None, exc: type[Exception], text: str) -> None:
    with pytest.raises(exc, match=text):
        resolve(DEFS, features, service, False)


def test_serving_state_caches_plans() -> None:
    state = ServingState(new_snapshot(DEFS, 1))
    p1 = state.plan(("uv:a",), None, False)
    assert state.plan(("uv:a",), None, False) is p1
    assert state.successor(state.snapshot, {"uv": 2}, {}).plan(("uv:a",), None, False) is p1


def test_validate_entities() -> None:
    known = DEFS.entities
    assert validate_entities({"user_id": [1, 2]}, frozenset({"user_id"}), known, 10) == 2
    cases: list[tuple[dict[str, list[Any]], type[Exception], str]] = [
        ({}, InvalidArgument, "no columns"),
        ({"user_id": []}, InvalidArgument, "no rows"),
        (
            {"user_id": [1, 2], "item_id": ["a"]},
            InvalidArgument,
            r"different lengths \(user_id=2, item_id=1\)",
        ),
        ({"user_id": list(range(11))}, LimitExceeded, "11 entity rows exceed the limit of 10"),
        ({"user_id": [1, "2"]}, InvalidArgument, "takes int64 keys; row 1 is str"),
        ({"user_id": [True]}, InvalidArgument, "row 0 is bool"),
        ({"user_id": [2**63]}, InvalidArgument, "outside the int64 range"),
        ({"item_id": [5]}, InvalidArgument, "takes string keys; row 0 is int"),
        ({"shop": [1]}, InvalidArgument, "unknown entity 'shop'"),
        ({"item_id": ["x"]}, InvalidArgument, "need entity 'user_id'"),
    ]
    for entities, exc, text in cases:
        with pytest.raises(exc, match=text):
            validate_entities(entities, frozenset({"user_id"}), known, 10)
    # a key of thousands of digits is quoted short, as any caller's value (docs/api.md, Errors)
    with pytest.raises(InvalidArgument) as e:
        validate_entities({"user_id": [1, int("9" * 4000)]}, frozenset({"user_id"}), known, 10)
    assert len(str(e.value)) < 200 and "row 1 key 999" in str(e.value) and "(4000 characters)" in str(e.value)


def test_view_keys_and_dedupe() -> None:
    ents: dict[str, list[Any]] = {"user_id": [1, 1, 2, 1], "item_id": ["a", "b", "a", "a"]}
    assert view_keys(("user_id",), ents) == [1, 1, 2, 1]
    keys = view_keys(("user_id", "item_id"), ents)
    assert keys == [(1, "a"), (1, "b"), (2, "a"), (1, "a")]
    assert dedupe(keys) == ([(1, "a"), (1, "b"), (2, "a")], [0, 1, 2, 0])
    assert dedupe([3, 4]) == ([3, 4], None)
    with pytest.raises(InvalidArgument, match=re.escape("may not contain '|'")):
        view_keys(("user_id", "item_id"), {"user_id": [1], "item_id": ["a|b"]})


def test_written_composite_keys_may_not_hold_the_separator() -> None:
    import pyarrow as pa

    from featurestore.rows import conform, view_schema

    schema = view_schema(UI)
    ts = schema.field("event_timestamp").type

    def rows(items: list[str]) -> pa.Table:
        n = len(items)
        return pa.table(
            {"user_id": [1] * n, "item_id": items, "s": [0.5] * n, "event_timestamp": pa.array([1] * n, ts)},
            schema=schema,
        )

    assert conform(UI, rows(["a", "b"])).num_rows == 2
    with pytest.raises(InvalidArgument, match=re.escape("column 'item_id' row 1: a part of a composite key")):
        conform(UI, rows(["a", "b|c"]))  # would be stored as the key of (1, "b") + "c"
    shop_only = FeatureView("iv", (ITEM,), (Feature("a", DType.STRING),))
    one = pa.table(
        {"item_id": ["x|y"], "a": ["z"], "event_timestamp": pa.array([1], ts)}, schema=view_schema(shop_only)
    )
    assert conform(shop_only, one).num_rows == 1  # a single-part key is stored as it is
