"""A registry a server cannot fully read (a malformed canary record, no current pointer)
keeps the server serving what it has, and says so under /readyz ``degraded``."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from featurestore.errors import FailedPrecondition
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
from featurestore.registry.admin import RegistryAdmin
from featurestore.registry.base import Canary
from featurestore.registry.file import FileRegistry
from featurestore.runtime import build_runtime
from tests.support import file_registry_config

USER = Entity("user_id", DType.INT64)


def defs(n_features: int) -> Definitions:
    view = FeatureView("v", (USER,), tuple(Feature(f"f{i}", DType.FLOAT64) for i in range(n_features)))
    return make_definitions("p", [USER], [view], [FeatureService("svc", (FeatureRef("v", "f0"),))])


async def _until(condition: object, what: str) -> None:
    for _ in range(400):  # 20 s: a generous bound, not a timing assertion
        if callable(condition) and condition():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"never happened: {what}")


def test_a_malformed_canary_record_raises_a_failed_precondition_naming_its_service() -> None:
    for raw in (b'{"candidate_version": 2, "share": 0.1}', b'{"candidate_version": 2, "share": 0, '
                b'"base_version": 1}', b"[1]", b"{not json"):  # fmt: skip
        with pytest.raises(
            FailedPrecondition, match=r"canary record of feature service 'ranker' is malformed"
        ):
            Canary.from_json(raw, "ranker")


async def test_a_malformed_canary_record_neither_stops_a_start_nor_holds_back_current(tmp_path: Path) -> None:
    """It made load_state raise: servers stopped applying every change, and a new server
    did not start (a traceback)."""
    admin = RegistryAdmin(FileRegistry(tmp_path / "reg", "p"))
    await admin.apply(defs(1))
    record = tmp_path / "reg" / "p" / "canary" / "svc"
    record.parent.mkdir(parents=True)
    record.write_text(json.dumps({"candidate_version": 1, "share": 0.1}))  # no base_version
    rt = await build_runtime(file_registry_config(tmp_path))
    try:
        assert rt.engine.state.version == 1 and rt.engine.state.canaries == {}
        await _until(lambda: rt.registry_apply_error is not None, "the record reported")
        fix = await admin.apply(defs(2))
        assert fix.snapshot is not None
        version = fix.snapshot.version
        await _until(lambda: rt.engine.state.version == version, "the next current served")
        degraded = rt.readiness().details["degraded"]
        assert any("'svc'" in d and "malformed" in d for d in degraded), degraded

        await admin.canary_abort("svc")  # deletes the record as read
        await _until(lambda: rt.registry_apply_error is None, "the report cleared")
    finally:
        await rt.close()


async def test_a_registry_without_current_is_reported_not_applied(tmp_path: Path) -> None:
    """Its current pointer gone (etcd rebuilt empty, the registry's directory moved): the
    server kept serving and said "ok", as if it served what the registry holds."""
    admin = RegistryAdmin(FileRegistry(tmp_path / "reg", "p"))
    await admin.apply(defs(1))
    rt = await build_runtime(file_registry_config(tmp_path))
    try:
        (tmp_path / "reg" / "p" / "registry" / "current").unlink()
        await _until(lambda: rt.registry_apply_error is not None, "the missing current reported")
        assert rt.engine.state.version == 1  # still served
        details = rt.readiness().details
        assert details["status"] == "degraded"
        assert any("no current snapshot (still serving version 1)" in d for d in details["degraded"])
    finally:
        await rt.close()


async def test_a_file_registry_whose_directory_is_gone_reports_itself_disconnected(tmp_path: Path) -> None:
    """Its health was hard-coded connected, 0 s since contact."""
    admin = RegistryAdmin(FileRegistry(tmp_path / "reg", "p"))
    await admin.apply(defs(1))
    rt = await build_runtime(file_registry_config(tmp_path))
    try:
        await _until(lambda: rt.registry.health().connected, "the first poll")
        (tmp_path / "reg").rename(tmp_path / "moved")  # unmounted, or moved away
        await _until(lambda: not rt.registry.health().connected, "the directory missed")
        await _until(lambda: rt.registry_apply_error is not None, "the missing current reported")
        assert rt.readiness().details["registry"]["connected"] is False
        (tmp_path / "moved").rename(tmp_path / "reg")
        await _until(lambda: rt.registry_apply_error is None, "served again")
        assert rt.registry.health().connected and rt.registry.health().seconds_since_contact < 5
    finally:
        await rt.close()
