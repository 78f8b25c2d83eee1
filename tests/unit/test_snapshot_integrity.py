"""A stored snapshot is checked when read: one damaged by hand or bit rot is refused as
corrupted (FAILED_PRECONDITION, naming the version), never served nor a raw KeyError."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from featurestore.definitions.parser import load_definitions
from featurestore.definitions.snapshot import (
    SnapshotCorrupted,
    new_snapshot,
    snapshot_from_json,
    snapshot_to_json,
)
from featurestore.errors import Code
from featurestore.model import Definitions, DType, Entity, Feature, FeatureView, make_definitions
from featurestore.registry.file import FileRegistry

DEMO = Path(__file__).resolve().parents[2] / "featurestore" / "demo"
USER = Entity("user_id", DType.INT64)


def defs() -> Definitions:
    view = FeatureView("v", (USER,), (Feature("f0", DType.FLOAT64), Feature("f1", DType.FLOAT64)))
    return make_definitions("p", [USER], [view], [])


@pytest.mark.parametrize("name", ["features.yaml", "stream_features.yaml"])
def test_every_kind_of_definition_reads_back_past_the_fingerprint_check(name: str) -> None:
    d = load_definitions(str(DEMO / name), str(DEMO))
    snap = new_snapshot(d, 3, "m")
    back = snapshot_from_json(snapshot_to_json(snap), 3)
    assert back.fingerprint == snap.fingerprint and back.definitions == d


async def _stored(tmp_path: Path) -> tuple[Path, dict[str, object]]:
    reg = FileRegistry(tmp_path, "p")
    await reg.publish(defs(), expected_version=None)
    path = tmp_path / "p" / "registry" / "snapshots" / "1.json"
    return path, json.loads(path.read_bytes())


async def test_a_snapshot_whose_definitions_were_edited_is_refused_as_corrupted(tmp_path: Path) -> None:
    path, doc = await _stored(tmp_path)
    doc["definitions"]["feature_views"][0]["features"][1]["dtype"] = "string"  # type: ignore[index]
    path.write_text(json.dumps(doc))
    with pytest.raises(SnapshotCorrupted, match=r"registry snapshot 1 is corrupted: .*fingerprint") as e:
        await FileRegistry(tmp_path, "p").current()
    assert e.value.code is Code.FAILED_PRECONDITION


async def test_a_snapshot_that_says_another_version_than_its_key_is_corrupted(tmp_path: Path) -> None:
    path, doc = await _stored(tmp_path)
    doc["version"] = 7
    path.write_text(json.dumps(doc))
    with pytest.raises(SnapshotCorrupted, match="snapshot 1 is corrupted: it says it is version 7"):
        await FileRegistry(tmp_path, "p").get(1)


@pytest.mark.parametrize(
    "damage",
    [
        lambda raw: raw[:100],  # truncated
        lambda raw: json.dumps({k: v for k, v in json.loads(raw).items() if k != "definitions"}).encode(),
        lambda raw: b"[1, 2]",
        lambda raw: raw.replace(b'"feature_views":[', b'"feature_views":[7,'),
    ],
    ids=["truncated", "no-definitions", "not-an-object", "a-view-not-an-object"],
)
async def test_a_snapshot_that_does_not_parse_is_corrupted_naming_its_version(
    tmp_path: Path, damage: object
) -> None:
    path, _ = await _stored(tmp_path)
    path.write_bytes(damage(path.read_bytes()))  # type: ignore[operator]
    with pytest.raises(SnapshotCorrupted, match="registry snapshot 1 is corrupted") as e:
        await FileRegistry(tmp_path, "p").get(1)
    assert e.value.code is Code.FAILED_PRECONDITION
