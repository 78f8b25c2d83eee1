"""A registry a server cannot fully read (a malformed canary record, no current pointer)
keeps the server serving what it has, and says so under /readyz ``degraded``."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest

from featurestore.errors import FailedPrecondition
from featurestore.registry.admin import RegistryAdmin
from featurestore.registry.base import Canary, MalformedCanary, load_state, read_canary
from featurestore.registry.file import FileRegistry
from featurestore.runtime import build_runtime
from tests.support import eventually, file_registry_config
from tests.unit.test_registry_canary_serving import defs

WAIT_S = 20  # a generous bound, not a timing assertion


def test_a_malformed_canary_record_raises_a_failed_precondition_naming_its_service() -> None:
    for raw in (b'{"candidate_version": 2, "share": 0.1}', b'{"candidate_version": 2, "share": 0, '
                b'"base_version": 1}', b"[1]", b"{not json"):  # fmt: skip
        with pytest.raises(
            FailedPrecondition, match=r"canary record of feature service 'ranker' is malformed"
        ):
            Canary.from_json(raw, "ranker")


@pytest.mark.parametrize(
    "raw",
    [
        b'{"candidate_version": 1e999, "share": 0.1, "base_version": 1}',  # inf: int() overflowed
        b"[" * 100_000,  # nested too deep for the decoder: RecursionError
        b'{"candidate_version": 1.9, "share": 0.1, "base_version": 1}',  # was coerced to 1
        b'{"candidate_version": 2, "share": "0.1", "base_version": true}',
        b'{"candidate_version": 2, "share": 0.1, "base_version": 1, "entity": [1]}',
        b'{"candidate_version": 2, "share": 1' + b"0" * 400 + b', "base_version": 1}',  # float() overflows
    ],
    ids=[
        "infinite version",
        "nested too deep",
        "fractional version",
        "strings and booleans",
        "entity not a string",
        "share too large for a float",
    ],
)
async def test_a_canary_record_no_parser_can_turn_into_numbers_is_malformed_never_a_crash(
    tmp_path: Path, raw: bytes
) -> None:
    """OverflowError and RecursionError escaped read_canary: load_state (every server's
    apply), `canary status` and `canary abort` raised them."""
    record = read_canary("ranker", raw)
    assert isinstance(record, MalformedCanary) and "ranker" in str(record)
    admin = RegistryAdmin(FileRegistry(tmp_path, "p"))
    await admin.apply(defs(1))
    (tmp_path / "p" / "canary").mkdir()
    (tmp_path / "p" / "canary" / "ranker").write_bytes(raw)
    state = await load_state(admin.registry)
    assert state.snapshot is not None and "ranker" in state.unreadable_canaries
    await admin.canary_abort("ranker")
    assert await admin.registry.canaries() == {}


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
        await eventually(lambda: rt.registry_apply_error is not None, WAIT_S, "the record reported")
        fix = await admin.apply(defs(2))
        assert fix.snapshot is not None
        version = fix.snapshot.version
        await eventually(lambda: rt.engine.state.version == version, WAIT_S, "the next current served")
        degraded = rt.readiness().details["degraded"]
        assert any("'svc'" in d and "malformed" in d for d in degraded), degraded

        await admin.canary_abort("svc")  # deletes the record as read
        await eventually(lambda: rt.registry_apply_error is None, WAIT_S, "the report cleared")
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
        await eventually(lambda: rt.registry_apply_error is not None, WAIT_S, "the missing current reported")
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
        await eventually(lambda: rt.registry.health().connected, WAIT_S, "the first poll")
        (tmp_path / "reg").rename(tmp_path / "moved")  # unmounted, or moved away
        await eventually(lambda: not rt.registry.health().connected, WAIT_S, "the directory missed")
        await eventually(lambda: rt.registry_apply_error is not None, WAIT_S, "the missing current reported")
        assert rt.readiness().details["registry"]["connected"] is False
        (tmp_path / "moved").rename(tmp_path / "reg")
        await eventually(lambda: rt.registry_apply_error is None, WAIT_S, "served again")
        assert rt.registry.health().connected and rt.registry.health().seconds_since_contact < 5
    finally:
        await rt.close()


async def test_a_registry_reset_that_reuses_version_numbers_serves_the_new_definitions(
    tmp_path: Path,
) -> None:
    """After a reset the same version numbers name other definitions: the server said
    "applied" but kept serving the old ones (it compared version numbers only)."""
    await RegistryAdmin(FileRegistry(tmp_path / "reg", "p")).apply(defs(1))
    rt = await build_runtime(file_registry_config(tmp_path))
    try:
        shutil.rmtree(tmp_path / "reg")  # the registry lost, then recreated from scratch
        await eventually(lambda: rt.registry_apply_error is not None, WAIT_S, "the missing current reported")
        again = (await RegistryAdmin(FileRegistry(tmp_path / "reg", "p")).apply(defs(3))).snapshot
        assert again is not None and again.version == 1  # the number the server serves
        await eventually(lambda: rt.registry_apply_error is None, WAIT_S, "the re-applied registry applied")
        served = rt.engine.state.snapshot
        assert served.version == 1 and served.fingerprint == again.fingerprint
        assert [f.name for f in served.definitions.views["v"].features] == ["f0", "f1", "f2"]
    finally:
        await rt.close()


async def test_an_expected_registry_state_is_logged_as_one_line_a_retry_and_a_bug_with_its_traceback(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A registry without current (or a malformed canary record) printed a whole
    traceback at every retry, in every worker, for as long as it lasted."""
    await RegistryAdmin(FileRegistry(tmp_path / "reg", "p")).apply(defs(1))
    rt = await build_runtime(file_registry_config(tmp_path))  # its applier has not run yet
    real = rt.apply_registry_change
    calls = 0

    async def a_bug_first() -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("a bug")
        await real()

    monkeypatch.setattr(rt, "apply_registry_change", a_bug_first)
    (tmp_path / "reg" / "p" / "registry" / "current").unlink()
    try:
        await eventually(lambda: calls >= 3, WAIT_S, "two retries")
    finally:
        await rt.close()
    failed = [r for r in caplog.records if r.getMessage().startswith("registry change not applied")]
    bug, *expected = failed
    assert bug.levelno == logging.ERROR and bug.exc_info is not None
    assert len(expected) >= 1
    for record in expected:
        assert record.levelno == logging.WARNING and record.exc_info is None
        assert "\n" not in record.getMessage() and "no current snapshot" in record.getMessage()


async def test_a_malformed_data_pointer_keeps_its_view_at_its_data_version_and_every_other_change_applies(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A data pointer edited into no number made load_state raise a ValueError: the server
    applied no registry change after it, with a traceback at every retry, and /readyz
    did not name the key."""
    admin = RegistryAdmin(FileRegistry(tmp_path / "reg", "p"))
    await admin.apply(defs(1))
    await admin.registry.swap_data_version("v", expected=0, new=3)
    pointer = tmp_path / "reg" / "p" / "data" / "v" / "current"
    rt = await build_runtime(file_registry_config(tmp_path))
    try:
        assert rt.engine.state.data_versions == {"v": 3}
        pointer.write_text("abc")
        await eventually(lambda: rt.registry_apply_error is not None, WAIT_S, "the pointer reported")
        change = (await admin.apply(defs(2))).snapshot
        assert change is not None
        await eventually(lambda: rt.engine.state.version == change.version, WAIT_S, "the next current served")
        assert rt.engine.state.data_versions == {"v": 3}  # its rows are still read
        details = rt.readiness().details
        assert details["status"] == "degraded"
        assert any(
            f"DataVersionNotRead: view 'v' stays at data version 3: registry pointer {pointer} is malformed: 'abc'"
            in d
            for d in details["degraded"]
        ), details["degraded"]
        assert not [r for r in caplog.records if r.exc_info], "a traceback"
        pointer.write_text("4")  # restored (here: moved on)
        await eventually(lambda: rt.registry_apply_error is None, WAIT_S, "the report cleared")
        assert rt.engine.state.data_versions == {"v": 4}
    finally:
        await rt.close()


async def test_a_server_starts_on_a_registry_with_a_malformed_data_pointer_and_reports_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    admin = RegistryAdmin(FileRegistry(tmp_path / "reg", "p"))
    await admin.apply(defs(1))
    await admin.registry.swap_data_version("v", expected=0, new=3)
    (tmp_path / "reg" / "p" / "data" / "v" / "current").write_text("3.5")
    rt = await build_runtime(file_registry_config(tmp_path))
    try:
        assert rt.engine.state.version == 1 and rt.engine.state.data_versions == {}
        assert "view 'v' has no data version: registry pointer" in caplog.text
        await eventually(lambda: rt.registry_apply_error is not None, WAIT_S, "the pointer reported")
        assert (rt.registry_apply_error or "").startswith("DataVersionNotRead: view 'v' has no data version")
        # (the reason is clipped for /readyz, past the path of the pytest worker's tmp dir)
        assert "'3.5' is no version number" in caplog.text
    finally:
        await rt.close()


async def test_a_canary_candidate_the_file_backend_cannot_read_never_holds_back_current(
    tmp_path: Path,
) -> None:
    """Any OSError reading the candidate's file (here: a directory in its place) escaped
    load_state: a file-backed server did not start; etcd's answers never raise one."""
    registry = FileRegistry(tmp_path / "reg", "p")
    await RegistryAdmin(registry).apply(defs(1))
    (tmp_path / "reg" / "p" / "registry" / "snapshots" / "2.json").mkdir()
    record = tmp_path / "reg" / "p" / "canary" / "svc"
    record.parent.mkdir(parents=True)
    record.write_bytes(Canary(2, 0.1, 1).to_json())
    state = await load_state(registry)
    assert state.snapshot is not None and state.snapshot.version == 1 and state.canaries == {}
    assert "registry snapshot 2 cannot be read: Is a directory" in state.unreadable_canaries["svc"]
    rows, _ = await RegistryAdmin(registry).history()
    assert [(r.version, r.problem[:40]) for r in rows] == [
        (2, "FAILED_PRECONDITION: registry snapshot 2"),
        (1, ""),
    ]
