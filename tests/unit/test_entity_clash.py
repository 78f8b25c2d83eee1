"""A request's entity columns come first in the result, named as the entities: a
feature (stored or derived) of the same name would give two columns of one name, of
which a client's dict keeps one. The plan refuses it for the entities of the views it
reads; the join refuses it for any other entity column the request carries (a plan is
cached without them). The HTTP 400 and gRPC INVALID_ARGUMENT: test_stored_values.py."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pyarrow as pa
import pytest

from featurestore.definitions.parser import parse_definitions
from featurestore.definitions.snapshot import new_snapshot
from featurestore.derived import compiler
from featurestore.errors import InvalidArgument
from featurestore.join import JoinEngine, JoinRequest, Limits
from featurestore.model import Definitions
from featurestore.plan import ServingState
from featurestore.rows import view_schema
from featurestore.sources.memory import MemorySource

DOC: dict[str, Any] = {
    "project": "p",
    "entities": [{"name": "user_id", "dtype": "int64"}, {"name": "item_id", "dtype": "int64"}],
    "feature_views": [
        {
            "name": "user_profile",
            "entities": ["user_id"],
            "features": [{"name": "item_id", "dtype": "int64"}, {"name": "score", "dtype": "float64"}],
        },
        {"name": "item", "entities": ["item_id"], "features": [{"name": "price", "dtype": "float64"}]},
    ],
    "derived_views": [
        {
            "name": "r",
            "inputs": ["user_profile:score"],
            "features": [{"name": "item_id", "dtype": "float64", "expression": "score * 2"}],
        }
    ],
}


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> JoinEngine:
    defs: Definitions = parse_definitions(DOC, source="clash.yaml")
    kernels = asyncio.run(compiler.kernels_for(defs, tmp_path_factory.mktemp("kernels")))
    mem = MemorySource("default")
    view = defs.views["user_profile"]

    async def load() -> None:
        await mem.prepare(list(defs.views.values()))
        rows = {"user_id": [1], "item_id": [99], "score": [0.5], "event_timestamp": [time.time_ns() // 1000]}
        schema = view_schema(view)
        await mem.write(
            view, pa.table({f.name: pa.array(rows[f.name], f.type) for f in schema}, schema=schema), 0
        )

    asyncio.run(load())
    return JoinEngine({"default": mem}, ServingState(new_snapshot(defs, 1), kernels=kernels), Limits())


def join(engine: JoinEngine, entities: dict[str, list[int]], *features: str, full: bool = False) -> Any:
    return asyncio.run(
        engine.join(JoinRequest(entities, features, full_feature_names=full), time.monotonic() + 5)
    )


@pytest.mark.parametrize("feature", ["user_profile:item_id", "r:item_id"], ids=["stored", "derived"])
def test_a_feature_named_as_another_entity_column_of_the_request_is_refused(
    engine: JoinEngine, feature: str
) -> None:
    """No requested view is keyed on item_id, so the plan alone cannot see the clash."""
    with pytest.raises(InvalidArgument) as e:
        join(engine, {"user_id": [1], "item_id": [7]}, feature)
    assert f"feature {feature} is named 'item_id', as the request's entity column 'item_id'" in str(e.value)
    assert e.value.details == [{"feature": feature, "entity": "item_id"}]


def test_the_same_plan_serves_a_request_without_the_clashing_entity_column(engine: JoinEngine) -> None:
    with pytest.raises(InvalidArgument):
        join(engine, {"user_id": [1], "item_id": [7]}, "user_profile:item_id")
    result = join(engine, {"user_id": [1]}, "user_profile:item_id")  # the cached plan, no clash
    assert [(c.name, list(c.values)) for c in result.columns] == [("user_id", [1]), ("item_id", [99])]


def test_full_feature_names_resolve_the_clash(engine: JoinEngine) -> None:
    result = join(engine, {"user_id": [1], "item_id": [7]}, "user_profile:item_id", "r:item_id", full=True)
    assert [c.name for c in result.columns] == ["user_id", "item_id", "user_profile__item_id", "r__item_id"]


def test_a_feature_named_as_the_key_of_a_view_it_reads_is_still_refused_by_the_plan(
    engine: JoinEngine,
) -> None:
    with pytest.raises(InvalidArgument, match="feature name 'item_id' equals an entity column"):
        join(engine, {"user_id": [1], "item_id": [7]}, "user_profile:item_id", "item:price")
