"""RegistryAdmin (apply, rollback, canary) over the file registry: the guards operators
rely on."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from featurestore import jobs
from featurestore.cli import main
from featurestore.config import Config, load_config
from featurestore.definitions.diff import Change
from featurestore.definitions.parser import load_definitions
from featurestore.errors import FailedPrecondition, InvalidArgument
from featurestore.model import (
    Definitions,
    DType,
    Entity,
    Feature,
    FeatureRef,
    FeatureService,
    FeatureView,
    make_definitions,
)
from featurestore.registry.admin import RegistryAdmin, refuse_incompatible
from featurestore.registry.file import FileRegistry

USER = Entity("user_id", DType.INT64)


def defs(n_features: int = 1, f0: DType = DType.FLOAT64) -> Definitions:
    features = (Feature("f0", f0), *(Feature(f"f{i}", DType.FLOAT64) for i in range(1, n_features)))
    view = FeatureView("v", (USER,), features)
    return make_definitions("p", [USER], [view], [FeatureService("svc", (FeatureRef("v", "f0"),))])


@pytest.fixture
def admin(tmp_path: Path) -> RegistryAdmin:
    return RegistryAdmin(FileRegistry(tmp_path, "p"))


async def test_promoting_again_ends_a_canary_left_behind_by_an_interrupted_promote(
    admin: RegistryAdmin,
) -> None:
    await admin.apply(defs(1))
    canary = await admin.canary_start("svc", defs(2), 0.1)
    # what a crash between the file registry's two writes leaves: current moved, canary on
    await admin.registry.set_current(canary.candidate_version, expected_version=canary.base_version)
    await admin.canary_promote("svc")
    assert await admin.registry.canaries() == {}
    assert (await admin.registry.current()).version == canary.candidate_version  # type: ignore[union-attr]


@pytest.mark.parametrize("share", [10.0, float("nan"), 0.0, -0.5])
async def test_a_canary_with_a_share_out_of_range_is_refused_before_anything_is_staged(
    admin: RegistryAdmin, share: float
) -> None:
    await admin.apply(defs(1))
    with pytest.raises(InvalidArgument, match="canary share must be in"):
        await admin.canary_start("svc", defs(2), share)
    assert await admin.registry.versions() == [1]
    assert await admin.registry.canaries() == {}


async def test_a_canary_with_incompatible_changes_is_refused_unless_forced(admin: RegistryAdmin) -> None:
    """A candidate is promoted as it is: the guard of apply holds for it too."""
    await admin.apply(defs(2))
    with pytest.raises(FailedPrecondition, match=r"incompatible changes: .*f0 dtype float64 -> string"):
        await admin.canary_start("svc", defs(2, f0=DType.STRING), 0.1)
    assert await admin.registry.versions() == [1] and await admin.registry.canaries() == {}
    canary = await admin.canary_start("svc", defs(2, f0=DType.STRING), 0.1, force=True)
    assert (await admin.registry.canaries())["svc"] == canary


def _config(tmp_path: Path, definitions: Path) -> Config:
    return load_config(
        None,
        {
            ("project",): "p",
            ("registry", "path"): str(tmp_path),
            ("registry", "definitions"): str(definitions),
            ("derived", "cache_dir"): str(tmp_path / "cache"),
        },
    )


def _yaml(dtype: str, extra: str = "") -> str:
    return (
        "project: p\n"
        "entities: [{name: user_id, dtype: int64}]\n"
        "feature_views:\n"
        "  - name: v\n    entities: [user_id]\n"
        f"    features: [{{name: f0, dtype: {dtype}}}, {{name: f1, dtype: float64}}{extra}]\n"
    )


async def test_apply_on_start_refuses_incompatible_definitions(admin: RegistryAdmin, tmp_path: Path) -> None:
    """A server started with a definitions file publishes it by apply's rules: a new file
    with incompatible changes is refused."""
    file = tmp_path / "features.yaml"
    file.write_text(_yaml("float64"))
    first = await jobs.apply_on_start(admin.registry, _config(tmp_path, file))
    assert first is not None and first.version == 1
    file.write_text(_yaml("string"))
    with pytest.raises(
        FailedPrecondition, match=r"features.yaml is not applied on start: incompatible changes"
    ):
        await jobs.apply_on_start(admin.registry, _config(tmp_path, file))
    assert (await admin.registry.current()).version == 1  # type: ignore[union-attr]
    assert await admin.registry.versions() == [1]


@pytest.mark.parametrize(
    "newer",
    [_yaml("string"), _yaml("float64", ", {name: f2, dtype: float64}")],
    ids=["incompatible, applied with --force", "compatible, a promoted canary"],
)
async def test_a_server_restarted_with_an_older_applied_file_serves_current_without_publishing_it(
    admin: RegistryAdmin, tmp_path: Path, newer: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Servers still configured with the file an operator has since replaced (apply
    --force, a canary promoted, a rollback) restart and scale up: they serve current,
    neither refusing to start nor publishing the old file again (undoing the change)."""
    file = tmp_path / "features.yaml"
    file.write_text(_yaml("float64"))
    assert (await jobs.apply_on_start(admin.registry, _config(tmp_path, file))).version == 1  # type: ignore[union-attr]
    replacement = tmp_path / "newer.yaml"
    replacement.write_text(newer)
    applied = await admin.apply(load_definitions(replacement), force=True)
    assert applied.snapshot is not None and applied.snapshot.version == 2

    served = await jobs.apply_on_start(admin.registry, _config(tmp_path, file))
    assert served is not None and served.version == 2
    assert await admin.registry.versions() == [1, 2]
    assert "holds the definitions of registry version 1, not current's (version 2)" in caplog.text


async def test_a_server_restarted_with_a_file_whose_version_was_pruned_does_not_publish_it_again(
    admin: RegistryAdmin, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Prune deleted the only snapshot holding the file's definitions: apply on start no
    longer knew them as older, and published them again, undoing the operator's change."""
    file = tmp_path / "features.yaml"
    file.write_text(_yaml("float64"))
    assert (await jobs.apply_on_start(admin.registry, _config(tmp_path, file))).version == 1  # type: ignore[union-attr]
    replacement = tmp_path / "newer.yaml"
    replacement.write_text(_yaml("float64", ", {name: f2, dtype: float64}"))
    assert (await admin.apply(load_definitions(replacement))).snapshot.version == 2  # type: ignore[union-attr]

    index, records = (tmp_path / "p" / "registry" / name for name in ("fingerprints", "fingerprint-of"))
    index.rename(tmp_path / "aside")  # as if published before the index and the records existed:
    records.rename(tmp_path / "records-aside")  # found by reading the snapshots
    assert (await jobs.apply_on_start(admin.registry, _config(tmp_path, file))).version == 2  # type: ignore[union-attr]
    assert "`featurestore registry rollback 1`" in caplog.text
    (tmp_path / "aside").rename(index)
    shutil.rmtree(records)  # (the snapshots it read in full have their records written again)
    (tmp_path / "records-aside").rename(records)

    assert await admin.prune(1) == [1]
    caplog.clear()
    served = await jobs.apply_on_start(admin.registry, _config(tmp_path, file))
    assert served is not None and served.version == 2
    assert await admin.registry.versions() == [2]  # nothing published
    assert "holds the definitions of registry version 1, not current's (version 2)" in caplog.text
    assert "version 1 was pruned since" in caplog.text and f"`featurestore apply {file}`" in caplog.text
    assert "registry rollback" not in caplog.text  # to a version that no longer exists


def test_prune_of_a_file_registry_gives_no_etcd_advice(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """It said "(etcd frees the space after a compaction and defrag)" whatever the registry."""
    config = tmp_path / "config.yaml"
    config.write_text(f"project: p\nregistry: {{kind: file, path: {tmp_path / 'reg'}}}\n")
    for n, extra in enumerate(("", ", {name: f2, dtype: float64}")):
        (tmp_path / f"{n}.yaml").write_text(_yaml("float64", extra))
        assert main(["apply", str(tmp_path / f"{n}.yaml"), "--config", str(config)]) == 0
    capsys.readouterr()
    assert main(["registry", "prune", "--keep", "1", "--config", str(config)]) == 0
    assert capsys.readouterr().out == "deleted 1 snapshots: 1\n"


def test_a_refused_change_of_derived_views_only_asks_callers_to_follow_not_to_rematerialize() -> None:
    derived = Change("~", "derived_view", "d", incompatible=("request field price dtype float64 -> int64",))
    stored = Change("~", "feature_view", "v", incompatible=("f0 dtype float64 -> string",))
    with pytest.raises(FailedPrecondition, match=r"--force to apply anyway, callers must then send") as e:
        refuse_incompatible([derived])
    assert "re-materialize" not in str(e.value)
    with pytest.raises(FailedPrecondition, match=r"--force to apply anyway, then re-materialize the views"):
        refuse_incompatible([derived, stored])
