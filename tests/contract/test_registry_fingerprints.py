"""The Registry contract: the fingerprint recorded beside each snapshot
(``snapshot_fingerprints``), and what apply on start reads with it to tell whether a
definitions file was published before. Both adapters."""

from __future__ import annotations

from featurestore import jobs
from featurestore.definitions.snapshot import RegistrySnapshot, fingerprint, new_snapshot, snapshot_to_json
from featurestore.registry.base import Registry
from tests.contract.adapters import RegistryFactory
from tests.contract.test_registry import defs


def count_reads(registry: Registry) -> list[int]:
    """The versions ``registry.get`` is asked for from now on (each a snapshot read in
    full, or parsed from the cache: either way what the caller asked to read)."""
    reads: list[int] = []
    get = registry.get

    async def counted(version: int) -> RegistrySnapshot:
        reads.append(version)
        return await get(version)

    registry.get = counted  # type: ignore[method-assign]
    return reads


async def write_as_an_older_release(factory: RegistryFactory, version: int, n_features: int) -> str:
    """Snapshot ``version`` as a featurestore before the records wrote it: the snapshot
    alone, no index entry, no record. Returns its fingerprint."""
    snap = new_snapshot(defs(n_features), version, "by an older release")
    name = f"{version}.json" if factory.name == "file" else str(version)
    await factory.put_by_hand(f"registry/snapshots/{name}", snapshot_to_json(snap))
    return snap.fingerprint


async def test_each_snapshot_has_its_fingerprint_recorded_and_prune_deletes_the_record_with_it(
    factory: RegistryFactory, registry: Registry
) -> None:
    one, two, three = defs(1), defs(2), defs(3)
    await registry.publish(one, expected_version=None)  # 1
    await registry.stage(two)  # 2: a canary's candidate
    await registry.publish(three, expected_version=1)  # 3
    assert await registry.snapshot_fingerprints() == {
        1: fingerprint(one),
        2: fingerprint(two),
        3: fingerprint(three),
    }
    assert await registry.prune(1) == [1, 2]
    assert await registry.snapshot_fingerprints() == {3: fingerprint(three)}
    gone = await factory.read_by_hand("registry/fingerprint-of/1")
    assert gone is None  # deleted with its snapshot, not left behind
    assert await factory.read_by_hand("registry/fingerprint-of/3") is not None
    await factory.put_by_hand("registry/snapshots/3.bak", b"an operator's backup")
    assert list(await registry.snapshot_fingerprints()) == [3]  # no snapshot, no version


async def test_a_never_published_file_reads_no_snapshot_in_full_when_every_snapshot_has_a_record(
    registry: Registry,
) -> None:
    """The index can say "published as N" but not "never published": a new file (every
    rollout's first servers) read every snapshot of the registry, one round trip each."""
    for n in range(1, 13):
        await registry.publish(defs(n), expected_version=n - 1 or None)
    current = await registry.current()
    reads = count_reads(registry)
    assert await jobs._older_snapshot(registry, fingerprint(defs(20)), current) is None
    assert reads == []
    assert await jobs._older_snapshot(registry, fingerprint(defs(5)), current) == 5  # the index
    assert reads == []


async def test_a_snapshot_published_by_an_older_release_without_a_record_is_still_found(
    factory: RegistryFactory, registry: Registry
) -> None:
    """A rolling upgrade: an older featurestore published version 1 (no index entry, no
    record); a server started with its file must still know it as older, reading only
    the snapshots that have no record. The file registry records a snapshot it read in
    full (publishing version 2 read version 1 as the previous one), so from then on it
    reads none; etcd's records are written with their snapshot only."""
    old = await write_as_an_older_release(factory, 1, 1)
    assert (await registry.snapshot_fingerprints())[1] is None
    await registry.set_current(1, expected_version=None)
    for n in range(2, 7):
        await registry.publish(defs(n), expected_version=n - 1)
    assert await registry.published_with(old) is None
    current = await registry.current()
    assert current is not None and current.version == 6
    unrecorded = [] if factory.name == "file" else [1]
    assert (await registry.snapshot_fingerprints())[1] == (old if factory.name == "file" else None)
    reads = count_reads(registry)
    assert await jobs._older_snapshot(registry, old, current) == 1
    assert reads == unrecorded
    reads.clear()
    assert await jobs._older_snapshot(registry, fingerprint(defs(20)), current) is None
    assert reads == unrecorded  # a new file: only a snapshot without a record is read


async def test_a_snapshot_rewritten_by_hand_is_read_not_taken_by_its_old_record(
    factory: RegistryFactory, registry: Registry
) -> None:
    """A record names the definitions its snapshot was written with: once an operator
    writes other definitions under that version, the record no longer speaks for it."""
    await registry.publish(defs(1), expected_version=None)
    await registry.publish(defs(2), expected_version=1)
    rewritten = new_snapshot(defs(7), 1, "by hand")
    await factory.snapshot_by_hand(1, snapshot_to_json(rewritten))
    starting = factory.client()  # a server starting now (nothing of version 1 cached)
    assert await starting.snapshot_fingerprints() == {1: None, 2: fingerprint(defs(2))}
    current = await starting.current()
    reads = count_reads(starting)
    assert await jobs._older_snapshot(starting, rewritten.fingerprint, current) == 1
    assert reads == [1]
    await starting.close()
