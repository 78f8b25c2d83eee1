"""The file registry's fingerprint records (featurestore/registry/file_records.py) on a
copied registry: read in full once, then by its records."""

from __future__ import annotations

import shutil
from pathlib import Path

from featurestore import jobs
from featurestore.definitions.snapshot import fingerprint
from featurestore.registry.file import FileRegistry
from tests.contract.test_registry import defs
from tests.contract.test_registry_fingerprints import count_reads


async def test_a_copied_registry_is_read_in_full_once_then_by_the_records_it_wrote_again(
    tmp_path: Path,
) -> None:
    original = FileRegistry(tmp_path / "a", "p")
    await original.publish(defs(1), expected_version=None)
    for n in (2, 3, 4):
        await original.publish(defs(n), expected_version=n - 1)
    shutil.copytree(tmp_path / "a", tmp_path / "b")  # (cp -a: the same times, new inodes)
    copy = FileRegistry(tmp_path / "b", "p")
    assert await copy.snapshot_fingerprints() == dict.fromkeys((1, 2, 3, 4))  # no record trusted
    current = await copy.current()
    reads = count_reads(copy)
    assert await jobs._older_snapshot(copy, fingerprint(defs(9)), current) is None
    assert sorted(reads) == [1, 2, 3]  # each read in full once (current's was read already)
    starting = FileRegistry(tmp_path / "b", "p")  # the next start
    assert await starting.snapshot_fingerprints() == {n: fingerprint(defs(n)) for n in (1, 2, 3, 4)}
    current = await starting.current()
    reads = count_reads(starting)
    assert await jobs._older_snapshot(starting, fingerprint(defs(9)), current) is None
    assert reads == []


async def test_a_registry_the_server_may_only_read_still_serves_its_snapshots(tmp_path: Path) -> None:
    registry = FileRegistry(tmp_path, "p")
    await registry.publish(defs(1), expected_version=None)
    records = tmp_path / "p" / "registry" / "fingerprint-of"
    shutil.rmtree(records)
    records.write_bytes(b"")  # no record can be written there (a read-only mount, even for root)
    reader = FileRegistry(tmp_path, "p")
    snapshot = await reader.get(1)
    assert snapshot.fingerprint == fingerprint(defs(1))
    assert await reader.snapshot_fingerprints() == {1: None}
