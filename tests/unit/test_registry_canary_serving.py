"""A canary whose candidate a server cannot serve never holds back current there."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from featurestore.model import (
    BatchSource,
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
from featurestore.registry.file import FileRegistry
from featurestore.runtime import build_runtime
from tests.support import file_registry_config

USER = Entity("user_id", DType.INT64)


def defs(n_features: int) -> Definitions:
    view = FeatureView("v", (USER,), tuple(Feature(f"f{i}", DType.FLOAT64) for i in range(n_features)))
    return make_definitions("p", [USER], [view], [FeatureService("svc", (FeatureRef("v", "f0"),))])


def candidate_on_a_store_this_server_lacks() -> Definitions:
    v = FeatureView("v", (USER,), (Feature("f0", DType.FLOAT64),))
    w = FeatureView("w", (USER,), (Feature("g", DType.FLOAT64),), online_store="analytics")
    refs = (FeatureRef("v", "f0"), FeatureRef("w", "g"))
    return make_definitions("p", [USER], [v, w], [FeatureService("svc", refs)])


async def _until(condition: object, what: str) -> None:
    for _ in range(400):  # 20 s: a generous bound, not a timing assertion
        if callable(condition) and condition():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"never happened: {what}")


async def test_a_canary_this_server_cannot_serve_does_not_hold_back_a_new_current(tmp_path: Path) -> None:
    admin = RegistryAdmin(FileRegistry(tmp_path / "reg", "p"))
    await admin.apply(defs(1))
    config = file_registry_config(tmp_path)
    rt = await build_runtime(config)
    try:
        assert rt.engine.state.version == 1
        await admin.canary_start("svc", candidate_on_a_store_this_server_lacks(), 0.5)
        fix = await admin.apply(defs(2), message="an urgent fix unrelated to the canary")
        assert fix.snapshot is not None
        version = fix.snapshot.version
        await _until(lambda: rt.engine.state.version == version, "the fix served")
        assert rt.engine.state.canaries == {}
        await _until(lambda: rt.registry_apply_error is not None, "the canary reported")
        degraded = rt.readiness().details["degraded"]
        assert any("canary not served" in d and "'svc'" in d and "analytics" in d for d in degraded), degraded

        await admin.canary_abort("svc")  # the canary ends: nothing left to report
        await _until(lambda: rt.registry_apply_error is None, "the report cleared")
    finally:
        await rt.close()


async def test_a_server_starts_serving_current_when_a_canary_cannot_be_served(tmp_path: Path) -> None:
    admin = RegistryAdmin(FileRegistry(tmp_path / "reg", "p"))
    await admin.apply(defs(1))
    await admin.canary_start("svc", candidate_on_a_store_this_server_lacks(), 0.5)
    config = file_registry_config(tmp_path)
    rt = await build_runtime(config)
    try:
        assert rt.engine.state.version == 1 and rt.engine.state.canaries == {}
        await _until(lambda: rt.registry_apply_error is not None, "the canary reported")
        assert "canary not served" in rt.registry_apply_error  # type: ignore[operator]
    finally:
        await rt.close()


@pytest.mark.parametrize("damage", ["deleted", "corrupted"])
async def test_a_canary_whose_candidate_cannot_be_read_neither_stops_a_start_nor_holds_back_current(
    tmp_path: Path, damage: str
) -> None:
    """A candidate snapshot deleted by hand or damaged on disk: the server starts on
    current, reports the canary unserved and serves the next current."""
    admin = RegistryAdmin(FileRegistry(tmp_path / "reg", "p"))
    await admin.apply(defs(1))
    canary = await admin.canary_start("svc", defs(2), 0.5)
    candidate = tmp_path / "reg" / "p" / "registry" / "snapshots" / f"{canary.candidate_version}.json"
    if damage == "deleted":
        candidate.unlink()
    else:
        candidate.write_bytes(b'{"version": 2, "trunc')
    config = file_registry_config(tmp_path)
    rt = await build_runtime(config)
    try:
        assert rt.engine.state.version == 1 and rt.engine.state.canaries == {}
        await _until(lambda: rt.registry_apply_error is not None, "the canary reported")
        degraded = rt.readiness().details["degraded"]
        assert any("canary not served" in d and "candidate version 2" in d for d in degraded), degraded

        fix = await admin.apply(defs(3), message="an urgent fix unrelated to the canary")
        assert fix.snapshot is not None
        version = fix.snapshot.version
        await _until(lambda: rt.engine.state.version == version, "the fix served")
        assert rt.engine.state.canaries == {}
    finally:
        await rt.close()


async def test_a_canary_whose_kernel_does_not_build_here_is_not_compiled_again_at_each_retry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The applier retries a canary it cannot serve every few seconds: the candidate's
    kernel is compiled by one build process, and the retries report its error again
    without starting another."""
    from prometheus_client import REGISTRY

    from featurestore.definitions.parser import parse_definitions
    from tests.unit.test_derived_cache import counting_builds, doc, trusted_package

    function = trusted_package(
        tmp_path, "trusted_pkg_canary", "def risk(a):\n    return object()\n", monkeypatch
    )
    current = doc(["u:x"], "x")
    del current["derived_views"]
    candidate = doc(["u:x"], "", function=function, args=("x",))
    for raw, features in ((current, ["u:x"]), (candidate, ["u:x", "d:s"])):
        raw["feature_services"] = [{"name": "svc", "features": features}]
    admin = RegistryAdmin(FileRegistry(tmp_path / "reg", "p"))
    await admin.apply(parse_definitions(current, source="v1.yaml"))
    await admin.canary_start("svc", parse_definitions(candidate, source="v2.yaml"), 0.5)
    config = file_registry_config(tmp_path)
    builds = counting_builds(monkeypatch)

    def failures() -> float:
        return REGISTRY.get_sample_value("featurestore_registry_apply_failures_total") or 0.0

    rt = await build_runtime(config)
    try:
        start = failures()
        await _until(lambda: failures() >= start + 3, "three retries of the canary")
        assert "the kernel does not compile" in (rt.registry_apply_error or ""), rt.registry_apply_error
        assert rt.engine.state.canaries == {}
        assert len(builds) == 1, builds
    finally:
        await rt.close()


async def test_a_change_is_no_longer_reported_pending_once_served_while_the_lineage_graph_learns_it(
    tmp_path: Path,
) -> None:
    # (a join saw the new version while /readyz still said the change was not applied)
    admin = RegistryAdmin(FileRegistry(tmp_path / "reg", "p"))
    await admin.apply(defs(1))
    rt = await build_runtime(file_registry_config(tmp_path))
    graph_written = asyncio.Event()

    async def slow_graph(snapshot: object) -> None:
        await graph_written.wait()

    rt.definitions_to_graph = slow_graph  # type: ignore[method-assign]
    late = tmp_path / "late.parquet"  # a new view whose file is not there yet: not served
    w = FeatureView("w", (USER,), (Feature("g", DType.FLOAT64),), batch_source=BatchSource(path=str(late)))
    v2 = make_definitions("p", [USER], [*defs(1).views.values(), w], list(defs(1).services.values()))
    try:
        await admin.apply(v2)
        await _until(lambda: rt.registry_apply_error is not None, "the change reported pending")
        rows = {"user_id": [1], "g": [0.5], "event_timestamp": pa.array([0], pa.timestamp("us", tz="UTC"))}
        pq.write_table(pa.table(rows), late)
        await _until(lambda: rt.engine.state.version == 2, "version 2 served once its file is there")
        assert not graph_written.is_set()  # (the graph still learning version 2)
        assert not any("registry change not applied" in d for d in rt.readiness().details["degraded"])
    finally:
        graph_written.set()
        await rt.close()
