"""The Registry contract, continued: what a client keeps (its snapshot cache), what an
operator can list and delete (history, prune), and records a hand or an older version
left behind (a malformed canary record, a stray snapshot key or file, one named by
digits int() takes and the registry does not, a canary of a version no snapshot can
have). Both adapters."""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any

import pytest

from featurestore.definitions.snapshot import fingerprint
from featurestore.errors import Conflict, FailedPrecondition, InvalidArgument, NotFound
from featurestore.registry.admin import RegistryAdmin
from featurestore.registry.base import Canary, Registry, load_state
from featurestore.registry.snapshot_cache import EXTRA_SNAPSHOTS
from tests.contract.adapters import RegistryFactory
from tests.contract.test_registry import defs
from tests.contract.test_registry_fingerprints import count_reads


def cached(registry: Registry) -> list[int]:
    """The versions a client keeps parsed (the bound is the adapters' own business)."""
    versions: list[int] = registry._cache.versions()  # type: ignore[attr-defined]
    return versions


async def test_a_server_keeps_only_the_served_snapshots_and_a_few_more(factory: RegistryFactory) -> None:
    """Every version a server ever read stayed in its memory for good: one parsed
    snapshot per apply, rollback or canary, in every worker, for the life of the process."""
    writer, server = factory.client(), factory.client()
    await writer.publish(defs(1), expected_version=None)
    candidate = await writer.stage(defs(2))
    await writer.set_canary("svc", Canary(candidate.version, 0.1, 1), expected=None)
    await load_state(server)  # the server starts: version 1 is current, and then the canary's base
    for n in range(3, 23):  # current moves on; the canary's base stays version 1
        await writer.publish(defs(n), expected_version=n - 1 if n > 3 else 1)
        state = await load_state(server)  # what a server reads at each change
        assert state.snapshot is not None and state.snapshot.version == n
    kept = cached(server)
    assert {22, candidate.version, 1} <= set(kept), kept  # current, the candidate, its base
    assert len(kept) <= 3 + EXTRA_SNAPSHOTS, kept
    served = await server.current()
    assert served is await server.current()  # current is not read again
    await writer.close()
    await server.close()


async def test_history_reads_only_the_newest_snapshots_newest_first(registry: Registry) -> None:
    for n in range(1, 8):
        await registry.publish(defs(n), expected_version=n - 1 or None)
    reads = count_reads(registry)
    rows, older = await RegistryAdmin(registry).history(3)
    assert [r.version for r in rows] == [7, 6, 5] and older == 4
    assert [r.current for r in rows] == [True, False, False]
    assert sorted(set(reads)) == [5, 6, 7]  # (current is read to mark it)
    rows, older = await RegistryAdmin(registry).history(0)
    assert [r.version for r in rows] == [7, 6, 5, 4, 3, 2, 1] and older == 0
    with pytest.raises(InvalidArgument):
        await RegistryAdmin(registry).history(-1)


async def test_history_lists_a_corrupted_old_snapshot_as_a_row_and_the_others_whole(
    factory: RegistryFactory,
) -> None:
    registry = factory.client()
    await registry.publish(defs(1), expected_version=None)
    await registry.stage(defs(2))  # an aborted canary's candidate
    await registry.publish(defs(3), expected_version=1)
    await factory.snapshot_by_hand(2, b'{"version": 2, "trunc')
    rows, _ = await RegistryAdmin(registry).history()
    assert [(r.version, r.snapshot is not None, r.current) for r in rows] == [
        (3, True, True),
        (2, False, False),
        (1, True, False),
    ]
    assert "corrupted" in rows[1].problem
    await registry.close()


async def test_prune_keeps_current_every_canarys_candidate_and_base_and_the_newest(
    registry: Registry,
) -> None:
    for n in range(1, 4):
        await registry.publish(defs(n), expected_version=n - 1 or None)
    candidate = await registry.stage(defs(9))  # version 4, against base 3
    await registry.set_canary("svc", Canary(candidate.version, 0.1, 3), expected=None)
    for n in range(5, 8):
        await registry.publish(defs(n), expected_version=n - 1 if n > 5 else 3)
    assert await registry.versions() == [1, 2, 3, 4, 5, 6, 7]
    assert await registry.prune(2, dry_run=True) == [1, 2, 5]
    assert await registry.versions() == [1, 2, 3, 4, 5, 6, 7]  # a dry run deletes nothing
    assert await registry.prune(2) == [1, 2, 5]
    assert await registry.versions() == [3, 4, 6, 7]
    assert await registry.prune(2) == []
    published = await registry.publish(defs(8), expected_version=7)
    assert published.version == 8  # numbers are never handed out again
    with pytest.raises(InvalidArgument):
        await registry.prune(0)


async def test_a_prune_racing_a_rollback_never_leaves_current_without_its_snapshot(
    factory: RegistryFactory,
) -> None:
    """Current moves back to version 1 (``set_current``) after the prune has read
    current (3) and the versions, before it deletes: version 1 must not be deleted
    under it (etcd: the prune's transaction fails; file: the rollback waits for the
    prune's lock, then finds version 1 gone)."""
    pruner, other = factory.client(), factory.client()
    for n in range(1, 4):
        await pruner.publish(defs(n), expected_version=n - 1 or None)
    rolled_back: list[BaseException | None] = []
    if factory.name == "etcd":
        versions = pruner.versions

        async def racing() -> list[int]:
            listed = await versions()
            await other.set_current(1, expected_version=3)
            rolled_back.append(None)
            return listed

        pruner.versions = racing  # type: ignore[method-assign]
        with pytest.raises(Conflict):
            await pruner.prune(1)
    else:
        listing: Any = pruner._list_versions  # type: ignore[attr-defined]
        thread: list[threading.Thread] = []

        def rollback() -> None:
            try:
                asyncio.run(other.set_current(1, expected_version=3))
                rolled_back.append(None)
            except NotFound as e:
                rolled_back.append(e)

        def racing_listing() -> list[int]:
            thread.append(threading.Thread(target=rollback))
            thread[0].start()
            thread[0].join(0.3)
            assert thread[0].is_alive()  # waiting for the prune's lock
            return listing()  # type: ignore[no-any-return]

        pruner._list_versions = racing_listing  # type: ignore[attr-defined]
        assert await pruner.prune(1) == [1, 2]
        thread[0].join(10)
        assert isinstance(rolled_back[0], NotFound)
    current = await other.current()  # its snapshot exists, whichever won
    assert current is not None and current.version in await other.versions()
    assert len(rolled_back) == 1
    await pruner.close()
    await other.close()


async def test_a_canary_cannot_start_on_a_candidate_pruned_meanwhile(registry: Registry) -> None:
    await registry.publish(defs(1), expected_version=None)
    staged = await registry.stage(defs(2))
    await registry.publish(defs(3), expected_version=1)
    assert await registry.prune(1) == [1, staged.version]
    with pytest.raises(NotFound):
        await registry.set_canary("svc", Canary(staged.version, 0.1, 1), expected=None)


async def test_a_malformed_canary_record_is_reported_never_served_and_abort_deletes_it(
    factory: RegistryFactory,
) -> None:
    """A record missing base_version (hand-written, or by an older version) stopped every
    server from applying any change, stopped servers from starting, and made the CLI's
    status and abort fail with a traceback."""
    registry = factory.client()
    await registry.publish(defs(1), expected_version=None)
    await factory.put_by_hand("canary/svc", b'{"candidate_version": 1, "share": 0.1}')
    await factory.put_by_hand("canary/other", b'{"candidate_version": 1, "share": 0, "base_version": 1}')
    active = await registry.canaries()
    assert active == {} and sorted(active.malformed) == ["other", "svc"]
    assert "'base_version' is missing" in active.malformed["svc"].problem
    state = await load_state(registry)  # current is still served
    assert state.snapshot is not None and state.snapshot.version == 1
    assert "malformed" in state.unreadable_canaries["svc"]
    admin = RegistryAdmin(registry)
    with pytest.raises(FailedPrecondition, match="'svc' is malformed"):
        await admin.canary_promote("svc")
    with pytest.raises(FailedPrecondition, match="malformed"):
        await registry.prune(1)  # the versions it protects are unknown
    aborted = await admin.canary_abort("svc")
    assert aborted.service == "svc"  # type: ignore[union-attr]
    assert sorted((await registry.canaries()).malformed) == ["other"]
    await registry.close()


async def test_a_canary_key_or_file_not_named_as_a_service_is_skipped(factory: RegistryFactory) -> None:
    """An editor's backup ``svc~`` in the file backend's canary/ directory was parsed as
    a canary (and, malformed or not, was one)."""
    registry = factory.client()
    await registry.publish(defs(1), expected_version=None)
    record = Canary(1, 0.1, 1).to_json()
    await factory.put_by_hand("canary/svc~", record)
    await factory.put_by_hand("canary/svc.swp", b"\x00garbage")
    active = await registry.canaries()
    assert active == {} and active.malformed == {}
    await registry.close()


async def test_a_stray_key_among_the_snapshots_is_no_version(factory: RegistryFactory) -> None:
    """etcd: one key like ``snapshots/1.bak`` made versions(), and with it apply, canary
    start and history, fail with a ValueError traceback; the file backend ignored it."""
    registry = factory.client()
    await registry.publish(defs(1), expected_version=None)
    await factory.put_by_hand("registry/snapshots/1.bak", b"an operator's backup")
    assert await registry.versions() == [1]
    assert (await registry.publish(defs(2), expected_version=1)).version == 2
    assert (await registry.stage(defs(3))).version == 3
    rows, _ = await RegistryAdmin(registry).history()
    assert [r.version for r in rows] == [3, 2, 1]
    await registry.close()


async def test_a_canary_on_a_version_no_snapshot_can_have_never_holds_back_current(
    factory: RegistryFactory,
) -> None:
    """A hand-written candidate of 300 digits: the file backend's read of its snapshot
    raised OSError (file name too long), which load_state let through: a file-backed
    server did not start, where an etcd-backed one served current and reported the canary."""
    registry = factory.client()
    await registry.publish(defs(1), expected_version=None)
    huge = 10**300 - 1
    await factory.put_by_hand(
        "canary/svc", json.dumps({"candidate_version": huge, "share": 0.1, "base_version": 1}).encode()
    )
    state = await load_state(registry)
    assert state.snapshot is not None and state.snapshot.version == 1 and state.canaries == {}
    assert "does not exist" in state.unreadable_canaries["svc"]
    with pytest.raises(NotFound, match="does not exist"):  # (OSError: "File name too long")
        await RegistryAdmin(registry).canary_promote("svc")
    with pytest.raises(NotFound, match="does not exist"):
        await registry.set_canary("other", Canary(huge, 0.1, 1), expected=None)
    await registry.close()


async def test_a_snapshot_named_by_digits_that_are_not_ascii_is_no_version(factory: RegistryFactory) -> None:
    """``1².json``: str.isdigit() took it and int() did not; the file backend's
    versions(), and with it history and apply, failed with a ValueError traceback."""
    registry = factory.client()
    await registry.publish(defs(1), expected_version=None)
    suffix = ".json" if factory.name == "file" else ""
    for name in ("1\u00b2", "\u0662", "1" * 19):
        await factory.put_by_hand(f"registry/snapshots/{name}{suffix}", b"an operator's copy")
    assert await registry.versions() == [1]
    assert list(await registry.snapshot_fingerprints()) == [1]
    assert (await registry.publish(defs(2), expected_version=1)).version == 2
    rows, _ = await RegistryAdmin(registry).history()
    assert [r.version for r in rows] == [2, 1]
    await registry.close()


async def test_prune_never_forgets_the_newest_version_published_with_each_fingerprint(
    registry: Registry,
) -> None:
    """Apply on start tells a file of older definitions by a snapshot holding them; prune
    deleted that snapshot, and a server restarted with the old file published it again."""
    one, two = defs(1), defs(2)
    await registry.publish(one, expected_version=None)  # 1
    await registry.publish(two, expected_version=1)  # 2
    staged = await registry.stage(defs(3))  # 3: a canary's candidate
    await registry.publish(one, expected_version=2)  # 4: one's definitions again (a rollback)
    assert await registry.prune(1) == [1, 2, 3]
    assert await registry.versions() == [4]  # the index is no snapshot
    assert await registry.published_with(fingerprint(one)) == 4  # the newest with them
    assert await registry.published_with(fingerprint(two)) == 2  # pruned, remembered
    assert await registry.published_with(staged.fingerprint) == 3
    assert await registry.published_with(fingerprint(defs(5))) is None
    with pytest.raises(InvalidArgument, match="not a definitions fingerprint"):
        await registry.published_with("../registry/current")
