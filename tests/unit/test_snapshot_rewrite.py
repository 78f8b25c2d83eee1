"""A snapshot rewritten in place (docs/registry.md: never do it) arriving with a new data
version: the server swaps to the new data version and must serve the rewritten
definitions whole, never the rewrite's definitions with the plans and kernels resolved
against what that version held before. File registry and memory store, in one process:
what ``Runtime.apply_registry_change`` does."""

from __future__ import annotations

from pathlib import Path

from featurestore.definitions.snapshot import new_snapshot, snapshot_to_json
from featurestore.model import Definitions, DType, Entity, Feature, FeatureView, make_definitions
from featurestore.preparation import serving_state
from featurestore.registry.base import load_state
from featurestore.registry.file import FileRegistry
from featurestore.sources.memory import MemorySource

USER = Entity("user_id", DType.INT64)


def defs(*features: str) -> Definitions:
    view = FeatureView("v", (USER,), tuple(Feature(f, DType.FLOAT64) for f in features))
    return make_definitions("p", [USER], [view], [])


async def test_a_rewritten_snapshot_arriving_with_a_new_data_version_is_served_whole(tmp_path: Path) -> None:
    registry = FileRegistry(tmp_path, "p")
    stores = {"default": MemorySource()}
    await registry.publish(defs("a", "b"), expected_version=None)
    before = await serving_state(stores, await load_state(registry), None)
    assert before.plan(("v:b",), None, False).views[0].features == (1,)  # cached: b is column 1
    rewrite = snapshot_to_json(new_snapshot(defs("b", "c"), 1))  # b moved to column 0
    (tmp_path / "p" / "registry" / "snapshots" / "1.json").write_bytes(rewrite)
    await registry.swap_data_version("v", expected=0, new=await registry.allocate_data_version("v"))
    after = await serving_state(stores, await load_state(registry), before)
    assert not after.same_as(before)  # the new data version: the server swaps
    assert after.data_versions == {"v": 1}
    view = after.definitions.views["v"]
    assert [f.name for f in view.features] == ["b", "c"]
    plan = after.plan(("v:b",), None, False)
    assert plan.views[0].view is view and plan.views[0].features == (0,)
    await registry.close()
