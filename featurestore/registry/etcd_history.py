"""What the etcd registry keeps beside its snapshots, and how it deletes old ones:

    /featurestore/{project}/registry/fingerprints/{fp}          "<newest version written with it>" (never pruned)
    /featurestore/{project}/registry/fingerprint-of/{version}   "<fp>" (pruned with its snapshot)

Both are written in the transaction of each snapshot (``puts``). The index
(``fingerprints/``) answers "published as N" in one read; it cannot answer "never
published". The per-version records (``fingerprint-of/``) can, in one prefix read of
64-byte values instead of every snapshot in full. A snapshot written by a release older
than the records (during a rolling upgrade, or before) has none and must be read.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aetcd import utils

from featurestore.definitions.snapshot import RegistrySnapshot
from featurestore.registry.base import check_fingerprint, is_fingerprint, prunable, read_canaries
from featurestore.registry.conflicts import lost_race
from featurestore.registry.etcd_client import EtcdLink
from featurestore.registry.pointers import parse_pointer, version_named

# etcd's default --max-txn-ops is 128: a prune deletes at most this many snapshots a
# transaction, two keys each (the snapshot and its fingerprint record)
_PRUNE_BATCH = 50


class EtcdHistory:
    def __init__(self, link: EtcdLink, root: str) -> None:
        self._link = link
        self._snapshots = f"{root}registry/snapshots/".encode()
        self._current = f"{root}registry/current".encode()
        self._canary = f"{root}canary/".encode()
        self._index = f"{root}registry/fingerprints/".encode()
        self._records = f"{root}registry/fingerprint-of/".encode()

    def puts(self, tx: Any, snap: RegistrySnapshot) -> list[Any]:
        """What a snapshot's transaction writes besides it: its index entry and its record."""
        version = str(snap.version).encode()
        return [
            tx.put(self._index + snap.fingerprint.encode(), version),
            tx.put(self._records + version, snap.fingerprint.encode()),
        ]

    async def published_with(self, fingerprint: str) -> int | None:
        kv = await self._link.call(
            self._link.client.get, self._index + check_fingerprint(fingerprint).encode()
        )
        # (a value edited by hand into no number: as if unrecorded, the caller scans)
        return version_named(kv.value) if kv is not None else None

    async def snapshot_fingerprints(self) -> dict[int, str | None]:
        # The snapshot keys first (keys only): a snapshot published after this read is
        # not listed, one pruned after it is listed without its record (reading it then
        # finds it gone). A record counts only if it was written in the transaction that
        # wrote the snapshot's key as it is now (same mod_revision): a snapshot rewritten
        # by hand has no stale record, it is read.
        client = self._link.client
        keys = await self._link.call(client.get_prefix, self._snapshots, keys_only=True)
        written = {
            version: kv.mod_revision
            for kv in keys
            if (version := version_named(kv.key[len(self._snapshots) :])) is not None  # (``3.bak``: none)
        }
        recorded = {}
        for kv in await self._link.call(client.get_prefix, self._records):
            version, value = version_named(kv.key[len(self._records) :]), kv.value.decode(errors="replace")
            if version is not None and is_fingerprint(value) and written.get(version) == kv.mod_revision:
                recorded[version] = value
        return {version: recorded.get(version) for version in sorted(written)}

    async def prune(
        self,
        keep: int,
        dry_run: bool,
        versions: Callable[[], Awaitable[list[int]]],
        forget: Callable[[int], object],
    ) -> list[int]:
        """``Registry.prune``: ``versions`` lists the snapshots, ``forget`` drops a
        deleted one from the client's cache."""
        # Read canaries (their header's revision R), then current and the versions; each
        # transaction deletes only if current's key is as read and no canary key changed
        # after R (a range compare: every key under canary/ has mod_revision <= R), so a
        # concurrent apply, rollback, promote or canary start makes it fail with
        # Conflict instead of deleting what became current or a canary's. A snapshot
        # staged meanwhile is newer than every version listed, hence never deleted.
        client = self._link.client
        res = await self._link.call(client.get_prefix, self._canary)
        seen = int(res.header.revision)
        active = read_canaries((kv.key[len(self._canary) :].decode(errors="replace"), kv.value) for kv in res)
        cur = await self._link.call(client.get, self._current)
        current = parse_pointer(self._current.decode(), cur.value) if cur is not None else None
        doomed = prunable(await versions(), current, active, keep)
        if dry_run:
            return doomed
        tx = client.transactions
        canary_end = utils.prefix_range_end(self._canary)
        for i in range(0, len(doomed), _PRUNE_BATCH):
            batch = doomed[i : i + _PRUNE_BATCH]
            ok, _ = await self._link.call(
                client.transaction,
                compare=[
                    tx.mod(self._current) == (cur.mod_revision if cur is not None else 0),
                    tx.mod(self._canary, canary_end) < seen + 1,
                ],
                success=[
                    op
                    for v in batch
                    for op in (
                        tx.delete(self._snapshots + str(v).encode()),
                        tx.delete(self._records + str(v).encode()),
                    )
                ],
                failure=[],
            )
            if not ok:
                raise lost_race("registry current or a canary", note=f"{i} snapshots pruned before it was")
            for v in batch:
                forget(v)
        return doomed
