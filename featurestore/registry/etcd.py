"""etcd registry (aetcd, grpc.aio).

    /featurestore/{project}/registry/snapshots/{version}   immutable JSON
    /featurestore/{project}/registry/current               "<version>"
    /featurestore/{project}/registry/next                  "<last snapshot version written>"
    /featurestore/{project}/registry/fingerprints/{fp}     ``etcd_history.py``: the index of
    /featurestore/{project}/registry/fingerprint-of/{v}    fingerprints, each snapshot's record
    /featurestore/{project}/data/{view}/current            "<data version>"
    /featurestore/{project}/data/{view}/next               "<last allocated data version>"
    /featurestore/{project}/data/{view}/watermark          {"data_version", "event_time_us"[, "start_us"]}
    /featurestore/{project}/canary/{service}               {"candidate_version", "share"}

``publish`` is one transaction: it compares ``current``'s and ``next``'s mod_revision
with the ones it read and checks that snapshot n+1 does not exist yet, then writes the
snapshot, moves ``current`` and the counter ``next`` together (a version deleted by hand
is never handed out again). Of two concurrent publishers exactly one succeeds; the
other gets ``Conflict`` and nothing of it is left behind. A transaction that failed
although ``current`` is as read (only the counter moved: a snapshot staged meanwhile,
a canary's candidate) is tried again with the next number, comparing the same
mod_revision of ``current``; ``stage`` likewise.

``changes`` (``etcd_feed.py``) watches the project prefix and yields at every change.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Sequence
from typing import Any

import aetcd

from featurestore.definitions.snapshot import (
    RegistrySnapshot,
    new_snapshot,
    snapshot_from_json,
    snapshot_to_json,
)
from featurestore.errors import Conflict, NotFound
from featurestore.model import Definitions
from featurestore.registry.base import (
    Canaries,
    Canary,
    MalformedCanary,
    RegistryHealth,
    Watermark,
    read_canaries,
    read_canary,
    read_watermarks,
)
from featurestore.registry.conflicts import conflict, counter_kept_moving, lost_race
from featurestore.registry.etcd_client import EtcdAccess, EtcdLink
from featurestore.registry.etcd_feed import EtcdChangeFeed, EtcdReset
from featurestore.registry.etcd_history import EtcdHistory
from featurestore.registry.limits import ETCD_MAX_REQUEST_BYTES, check_snapshot_size
from featurestore.registry.pointers import DataVersions, parse_pointer, read_data_versions, version_named
from featurestore.registry.snapshot_cache import SnapshotCache

# How many times publish and stage take the next version number when only the counter
# moved since they read it (other snapshots staged or published meanwhile).
_COUNTER_TRIES = 20


class EtcdRegistry(EtcdChangeFeed):
    def __init__(
        self,
        endpoints: Sequence[str],
        project: str,
        *,
        timeout: float = 2.0,
        heartbeat_interval: float = 1.0,
        max_request_bytes: int = ETCD_MAX_REQUEST_BYTES,
        access: EtcdAccess | None = None,
    ) -> None:
        """``access``: user, password and TLS (docs/security.md); TLS when an endpoint
        is https:// or ``access`` names a CA or a client certificate."""
        root = f"/featurestore/{project}/"
        self._link = EtcdLink(endpoints, access or EtcdAccess(), timeout, max_request_bytes, root)
        self._project = project
        self.heartbeat_interval = heartbeat_interval
        self._root = root.encode()
        self._snapshots = f"{root}registry/snapshots/".encode()
        self._current = f"{root}registry/current".encode()
        self._next = f"{root}registry/next".encode()
        self._history = EtcdHistory(self._link, root)
        self._data = f"{root}data/".encode()
        self._canary = f"{root}canary/".encode()
        # Snapshots are immutable, but a key can be deleted and written again by hand:
        # the watch drops a cached version whose key changed (``_forget``).
        self._cache = SnapshotCache[RegistrySnapshot]()
        self._changed: dict[int, int] = {}  # version -> revision of its key's last change seen
        self._revision = 0  # highest revision seen by the watch
        self._cluster: int | None = None
        self._reset: EtcdReset | None = None
        self._reset_found = asyncio.Event()
        self._resets = 0

    @property
    def project(self) -> str:
        return self._project

    def health(self) -> RegistryHealth:
        return self._link.health()

    @property
    def _client(self) -> aetcd.Client:
        return self._link.client

    @staticmethod
    def _pointer(key: bytes, kv: Any, *, data: bool = False) -> int | None:
        """The version the pointer ``key`` holds as read (``kv``; None: no such key)."""
        return None if kv is None else parse_pointer(key.decode(), kv.value, data=data)

    # -- reads -----------------------------------------------------------------------

    async def current(self) -> RegistrySnapshot | None:
        version = self._pointer(self._current, await self._link.call(self._client.get, self._current))
        self._cache.pin("current", () if version is None else (version,))
        return None if version is None else await self.get(version)

    async def get(self, version: int) -> RegistrySnapshot:
        cached = self._cache.get(version)
        if cached is not None:
            return cached
        kv = await self._link.call(self._client.get, self._snapshots + str(version).encode())
        if kv is None:
            raise NotFound(f"registry snapshot {version} does not exist")
        # off the event loop: a large snapshot takes tens of ms to parse and verify
        snap = await asyncio.to_thread(snapshot_from_json, kv.value, version)
        if kv.mod_revision >= self._changed.get(version, 0):
            self._cache.put(version, snap)
        return snap

    def _forget(self, key: bytes, revision: int) -> None:
        """The watch saw ``key`` change at ``revision``: a cached snapshot of it is stale."""
        version = version_named(key[len(self._snapshots) :]) if key.startswith(self._snapshots) else None
        if version is not None:
            self._cache.pop(version)
            self._changed[version] = revision

    async def _next_version(self) -> tuple[int, int]:
        """The version to write next and the counter's mod_revision to compare."""
        counter = await self._link.call(self._client.get, self._next)
        last = max(self._pointer(self._next, counter) or 0, *await self.versions(), 0)
        return last + 1, counter.mod_revision if counter is not None else 0

    async def versions(self) -> list[int]:
        res = await self._link.call(self._client.get_prefix, self._snapshots, keys_only=True)
        # A key not named by a number (an operator's ``3.bak``) is no snapshot: skipped,
        # as the file backend skips such files.
        named = (version_named(kv.key[len(self._snapshots) :]) for kv in res)
        return sorted(v for v in named if v is not None)

    async def published_with(self, fingerprint: str) -> int | None:
        return await self._history.published_with(fingerprint)

    async def snapshot_fingerprints(self) -> dict[int, str | None]:
        return await self._history.snapshot_fingerprints()

    async def data_versions(self) -> DataVersions:
        return read_data_versions((await self._data_keys())[0])

    async def watermarks(self) -> dict[str, Watermark]:
        return read_watermarks((await self._data_keys())[1])

    async def data_state(self) -> tuple[DataVersions, dict[str, Watermark]]:
        current, marks = await self._data_keys()
        return read_data_versions(current), read_watermarks(marks)

    async def _data_keys(self) -> tuple[list[tuple[str, str, bytes]], list[tuple[str, bytes]]]:
        """One read of ``data/``: (view, key, value) of its ``{view}/current`` keys, and
        (view, value) of its ``{view}/watermark`` keys."""
        current, marks = [], []
        for kv in await self._link.call(self._client.get_prefix, self._data):
            view, _, leaf = kv.key[len(self._data) :].decode(errors="replace").partition("/")
            if leaf == "current":
                current.append((view, kv.key.decode(errors="replace"), kv.value))
            elif leaf == "watermark":
                marks.append((view, kv.value))
        return current, marks

    async def canaries(self) -> Canaries:
        res = await self._link.call(self._client.get_prefix, self._canary)
        found = read_canaries((kv.key[len(self._canary) :].decode(errors="replace"), kv.value) for kv in res)
        self._cache.pin(
            "canaries", (v for c in found.values() for v in (c.candidate_version, c.base_version))
        )
        return found

    # -- compare-and-swap writes ----------------------------------------------------

    async def publish(
        self, definitions: Definitions, *, expected_version: int | None, message: str = ""
    ) -> RegistrySnapshot:
        cur = await self._link.call(self._client.get, self._current)
        actual = self._pointer(self._current, cur)
        if actual != expected_version:
            raise conflict("registry current", expected_version, actual)
        read = cur.mod_revision if cur is not None else 0
        previous = await self.get(actual) if actual is not None else None
        for _ in range(_COUNTER_TRIES):
            snap = await self._write_next(definitions, message, previous, current_mod=read)
            if snap is not None:
                return snap
            # current's key as read: only the counter moved (or the snapshot key appeared),
            # and the next try compares the same mod_revision: still a compare-and-swap
            now = await self._link.call(self._client.get, self._current)
            if (now.mod_revision if now is not None else 0) != read:
                moved = self._pointer(self._current, now)
                if moved != expected_version:
                    raise conflict("registry current", expected_version, moved)
                raise lost_race("registry current", expected_version)
        raise counter_kept_moving(_COUNTER_TRIES)

    async def stage(self, definitions: Definitions, *, message: str = "") -> RegistrySnapshot:
        previous = await self.current()
        for _ in range(_COUNTER_TRIES):
            snap = await self._write_next(definitions, message, previous)
            if snap is not None:
                return snap
        raise counter_kept_moving(_COUNTER_TRIES)

    async def _write_next(
        self,
        definitions: Definitions,
        message: str,
        previous: RegistrySnapshot | None,
        current_mod: int | None = None,
    ) -> RegistrySnapshot | None:
        """Write the next snapshot and move the counter to it in one transaction, iff the
        counter is as read and the snapshot's key is free; with ``current_mod``, also move
        current to it, iff current's mod_revision is that. None: the transaction failed."""
        version, counter_mod = await self._next_version()
        snap = new_snapshot(definitions, version, message, previous)
        raw = snapshot_to_json(snap)
        check_snapshot_size(raw, version, self._link.max_request_bytes)
        key = self._snapshots + str(version).encode()
        tx = self._client.transactions
        number = str(version).encode()
        moves_current = current_mod is not None
        ok, _ = await self._link.call(
            self._client.transaction,
            compare=[
                *([tx.mod(self._current) == current_mod] if moves_current else []),
                tx.mod(self._next) == counter_mod,
                tx.version(key) == 0,
            ],
            success=[
                tx.put(key, raw),
                *([tx.put(self._current, number)] if moves_current else []),
                tx.put(self._next, number),
                *self._history.puts(tx, snap),
            ],
            failure=[],
        )
        return snap if ok else None

    async def set_current(self, version: int, *, expected_version: int | None) -> None:
        key = self._snapshots + str(version).encode()
        if await self._link.call(self._client.get, key) is None:
            raise NotFound(f"registry snapshot {version} does not exist")
        cur = await self._link.call(self._client.get, self._current)
        actual = self._pointer(self._current, cur)
        if actual != expected_version:
            raise conflict("registry current", expected_version, actual)
        tx = self._client.transactions
        ok, _ = await self._link.call(
            self._client.transaction,
            compare=[
                tx.mod(self._current) == (cur.mod_revision if cur is not None else 0),
                tx.version(key) > 0,
            ],
            success=[tx.put(self._current, str(version).encode())],
            failure=[],
        )
        if not ok:
            raise lost_race("registry current", expected_version)

    async def swap_data_version(self, view: str, *, expected: int, new: int) -> None:
        key = self._data + f"{view}/current".encode()
        decode = functools.partial(parse_pointer, key.decode(), data=True)
        await self._cas(key, f"data version of view {view!r}", expected, decode, str(new).encode(), absent=0)

    async def allocate_data_version(self, view: str) -> int:
        current_key = self._data + f"{view}/current".encode()
        next_key = self._data + f"{view}/next".encode()
        tx = self._client.transactions
        for _ in range(20):
            current = self._pointer(
                current_key, await self._link.call(self._client.get, current_key), data=True
            )
            counter = await self._link.call(self._client.get, next_key)
            allocated = max(self._pointer(next_key, counter, data=True) or 0, current or 0) + 1
            ok, _ = await self._link.call(
                self._client.transaction,
                compare=[tx.mod(next_key) == (counter.mod_revision if counter is not None else 0)],
                success=[tx.put(next_key, str(allocated).encode())],
                failure=[],
            )
            if ok:
                return allocated
        raise Conflict(f"could not allocate a data version of view {view!r}: too many concurrent allocations")

    async def set_canary(
        self, service: str, canary: Canary | None, *, expected: Canary | MalformedCanary | None
    ) -> None:
        # A canary starts only on a candidate that exists when its record is written
        # (one transaction): a prune deleting it meanwhile makes this fail instead.
        candidate = [] if canary is None else [self._snapshots + str(canary.candidate_version).encode()]
        await self._cas(
            self._canary + service.encode(),
            f"canary of service {service!r}",
            expected,
            lambda raw: read_canary(service, raw),
            canary.to_json() if canary is not None else None,
            existing=candidate,
        )

    async def promote(self, service: str, canary: Canary) -> None:
        key = self._canary + service.encode()
        kv = await self._link.call(self._client.get, key)
        actual = read_canary(service, kv.value) if kv is not None else None
        if actual != canary:
            raise conflict(f"canary of service {service!r}", canary, actual)
        candidate = self._snapshots + str(canary.candidate_version).encode()
        if await self._link.call(self._client.get, candidate) is None:
            raise NotFound(f"registry snapshot {canary.candidate_version} does not exist")
        cur = await self._link.call(self._client.get, self._current)
        base = self._pointer(self._current, cur)
        if base != canary.base_version:
            raise conflict("registry current", canary.base_version, base)
        tx = self._client.transactions
        ok, _ = await self._link.call(
            self._client.transaction,
            compare=[
                tx.mod(key) == kv.mod_revision,
                tx.mod(self._current) == (cur.mod_revision if cur is not None else 0),
                tx.version(candidate) > 0,
            ],
            success=[tx.put(self._current, str(canary.candidate_version).encode()), tx.delete(key)],
            failure=[],
        )
        if not ok:
            raise lost_race(
                f"canary of service {service!r} or registry current", note="both were as expected when read"
            )

    async def watermark(self, view: str) -> Watermark | None:
        kv = await self._link.call(self._client.get, self._data + f"{view}/watermark".encode())
        return Watermark.from_json(kv.value) if kv is not None else None

    async def set_watermark(self, view: str, mark: Watermark, *, expected: Watermark | None) -> None:
        key = self._data + f"{view}/watermark".encode()
        await self._cas(key, f"watermark of view {view!r}", expected, Watermark.from_json, mark.to_json())

    async def _cas(
        self,
        key: bytes,
        what: str,
        expected: Any,
        decode: Any,
        new: bytes | None,
        absent: Any = None,
        existing: Sequence[bytes] = (),
    ) -> None:
        """Write ``new`` to ``key`` (None: delete it) iff its value, decoded, is
        ``expected`` (``absent`` when there is no key), nobody wrote it in between and
        the snapshot keys ``existing`` exist (``NotFound`` otherwise)."""
        kv = await self._link.call(self._client.get, key)
        actual = decode(kv.value) if kv is not None else absent
        if actual != expected:
            raise conflict(what, expected, actual)
        for k in existing:
            if await self._link.call(self._client.get, k) is None:
                raise NotFound(f"registry snapshot {k[len(self._snapshots) :].decode()} does not exist")
        tx = self._client.transactions
        ok, _ = await self._link.call(
            self._client.transaction,
            compare=[
                tx.mod(key) == (kv.mod_revision if kv is not None else 0),
                *(tx.version(k) > 0 for k in existing),
            ],
            success=[tx.put(key, new)] if new is not None else [tx.delete(key)],
            failure=[],
        )
        if not ok:
            raise lost_race(what, expected)

    # -- pruning ---------------------------------------------------------------------

    async def prune(self, keep: int, *, dry_run: bool = False) -> list[int]:
        return await self._history.prune(keep, dry_run, self.versions, self._cache.pop)

    async def close(self) -> None:
        self._cache.clear()
        await self._link.close()
