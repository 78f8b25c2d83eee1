"""etcd registry (aetcd, grpc.aio).

    /featurestore/{project}/registry/snapshots/{version}   immutable JSON
    /featurestore/{project}/registry/current               "<version>"
    /featurestore/{project}/registry/next                  "<last snapshot version written>"
    /featurestore/{project}/data/{view}/current            "<data version>"
    /featurestore/{project}/data/{view}/next               "<last allocated data version>"
    /featurestore/{project}/data/{view}/watermark          {"data_version", "event_time_us"[, "start_us"]}
    /featurestore/{project}/canary/{service}               {"candidate_version", "share"}

``publish`` is one transaction: it compares ``current``'s and ``next``'s mod_revision
with the ones it read and checks that snapshot n+1 does not exist yet, then writes the
snapshot, moves ``current`` and the counter ``next`` together (a version deleted by hand
is never handed out again). Of two concurrent publishers exactly one succeeds; the
other gets ``Conflict`` and nothing of it is left behind.

``changes`` watches the project prefix from the last revision it has seen. When etcd
goes away the watch raises; it is re-established from that revision, on a new client,
retrying every 0.1 s doubling to 0.5 s (jittered), so no change is missed and a change
published once etcd is back reaches every server within about half a second. A watch
etcd cancels or ends (``etcd_watch.WatchEnded``) is opened again from that revision on
the same client (on a new one, authenticating again, when etcd no longer takes its auth
token); one compacted past it re-reads everything. Progress notifications move that
revision on while nothing under the prefix changes. A light
poll keeps ``last_contact`` fresh while nothing changes, which is how a server reports
how stale its registry view may be.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from typing import Any

import aetcd
from aetcd import exceptions as etcd_errors

from featurestore import metrics
from featurestore.definitions.snapshot import (
    RegistrySnapshot,
    new_snapshot,
    snapshot_from_json,
    snapshot_to_json,
)
from featurestore.errors import Conflict, NotFound, Unavailable
from featurestore.model import Definitions
from featurestore.registry.base import Canary, RegistryHealth, Watermark, conflict
from featurestore.registry.etcd_client import ERRORS, EtcdAccess, EtcdLink, auth_expired
from featurestore.registry.etcd_watch import RetryPause, WatchEnded, watch_prefix
from featurestore.registry.limits import ETCD_MAX_REQUEST_BYTES, check_snapshot_size

log = logging.getLogger(__name__)


# Re-arming a lost watch: a retry against a down etcd is one refused connect per
# worker, so retrying twice a second costs etcd nothing, and a change published once it
# is back reaches every worker within about 0.5 s (the docs promise about a second).
# Jitter keeps a fleet of workers, cut off at the same moment, from retrying in step.
_WATCH_RETRY_MIN_S = 0.1
_WATCH_RETRY_MAX_S = 0.5
# The pause starts over from the minimum only once a watch delivered events or lived
# this long after etcd confirmed it: a watch etcd (or a proxy) confirms and then ends at
# once, or one that was never confirmed however long its connect took, is retried at
# the growing pause, not every 0.1 s.
_WATCH_STEADY_S = 5.0


class EtcdRegistry:
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
        self._link = EtcdLink(endpoints, access or EtcdAccess(), timeout, max_request_bytes)
        self._project = project
        self.heartbeat_interval = heartbeat_interval
        root = f"/featurestore/{project}/"
        self._root = root.encode()
        self._snapshots = f"{root}registry/snapshots/".encode()
        self._current = f"{root}registry/current".encode()
        self._next = f"{root}registry/next".encode()
        self._data = f"{root}data/".encode()
        self._canary = f"{root}canary/".encode()
        # Snapshots are immutable, but a key can be deleted and written again by hand:
        # the watch drops a cached version whose key changed (``_forget``).
        self._cache: dict[int, RegistrySnapshot] = {}
        self._changed: dict[int, int] = {}  # version -> revision of its key's last change seen
        self._revision = 0  # highest revision seen by the watch

    @property
    def project(self) -> str:
        return self._project

    def health(self) -> RegistryHealth:
        return self._link.health()

    @property
    def _client(self) -> aetcd.Client:
        return self._link.client

    # -- reads -----------------------------------------------------------------------

    async def current(self) -> RegistrySnapshot | None:
        kv = await self._link.call(self._client.get, self._current)
        return None if kv is None else await self.get(int(kv.value))

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
            self._cache[version] = snap
        return snap

    def _forget(self, key: bytes, revision: int) -> None:
        """The watch saw ``key`` change at ``revision``: a cached snapshot of it is stale."""
        suffix = key[len(self._snapshots) :] if key.startswith(self._snapshots) else b""
        if suffix.isdigit():
            self._cache.pop(int(suffix), None)
            self._changed[int(suffix)] = revision

    async def _next_version(self) -> tuple[int, int]:
        """The version to write next and the counter's mod_revision to compare."""
        counter = await self._link.call(self._client.get, self._next)
        last = max(int(counter.value) if counter is not None else 0, *await self.versions(), 0)
        return last + 1, counter.mod_revision if counter is not None else 0

    async def versions(self) -> list[int]:
        res = await self._link.call(self._client.get_prefix, self._snapshots, keys_only=True)
        return sorted(int(kv.key[len(self._snapshots) :]) for kv in res)

    async def data_versions(self) -> dict[str, int]:
        res = await self._link.call(self._client.get_prefix, self._data)
        out = {}
        for kv in res:
            view, _, leaf = kv.key[len(self._data) :].decode().partition("/")
            if leaf == "current":
                out[view] = int(kv.value)
        return out

    async def canaries(self) -> dict[str, Canary]:
        res = await self._link.call(self._client.get_prefix, self._canary)
        return {kv.key[len(self._canary) :].decode(): Canary.from_json(kv.value) for kv in res}

    # -- compare-and-swap writes ----------------------------------------------------

    async def publish(
        self, definitions: Definitions, *, expected_version: int | None, message: str = ""
    ) -> RegistrySnapshot:
        cur = await self._link.call(self._client.get, self._current)
        actual = int(cur.value) if cur is not None else None
        if actual != expected_version:
            raise conflict("registry current", expected_version, actual)
        version, counter_mod = await self._next_version()
        previous = await self.get(actual) if actual is not None else None
        snap = new_snapshot(definitions, version, message, previous)
        raw = snapshot_to_json(snap)
        check_snapshot_size(raw, version, self._link.max_request_bytes)
        key = self._snapshots + str(version).encode()
        tx = self._client.transactions
        ok, _ = await self._link.call(
            self._client.transaction,
            compare=[
                tx.mod(self._current) == (cur.mod_revision if cur is not None else 0),
                tx.mod(self._next) == counter_mod,
                tx.version(key) == 0,
            ],
            success=[
                tx.put(key, raw),
                tx.put(self._current, str(version).encode()),
                tx.put(self._next, str(version).encode()),
            ],
            failure=[],
        )
        if not ok:
            raise conflict("registry current", expected_version, "changed concurrently")
        return snap

    async def stage(self, definitions: Definitions, *, message: str = "") -> RegistrySnapshot:
        version, counter_mod = await self._next_version()
        snap = new_snapshot(definitions, version, message, await self.current())
        raw = snapshot_to_json(snap)
        check_snapshot_size(raw, version, self._link.max_request_bytes)
        key = self._snapshots + str(version).encode()
        tx = self._client.transactions
        ok, _ = await self._link.call(
            self._client.transaction,
            compare=[tx.mod(self._next) == counter_mod, tx.version(key) == 0],
            success=[tx.put(key, raw), tx.put(self._next, str(version).encode())],
            failure=[],
        )
        if not ok:
            raise conflict(f"registry snapshot {version}", "absent", "written concurrently")
        return snap

    async def set_current(self, version: int, *, expected_version: int | None) -> None:
        key = self._snapshots + str(version).encode()
        if await self._link.call(self._client.get, key) is None:
            raise NotFound(f"registry snapshot {version} does not exist")
        cur = await self._link.call(self._client.get, self._current)
        actual = int(cur.value) if cur is not None else None
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
            raise conflict("registry current", expected_version, "changed concurrently")

    async def swap_data_version(self, view: str, *, expected: int, new: int) -> None:
        key = self._data + f"{view}/current".encode()
        await self._cas(key, f"data version of view {view!r}", expected, int, str(new).encode(), absent=0)

    async def allocate_data_version(self, view: str) -> int:
        current_key = self._data + f"{view}/current".encode()
        next_key = self._data + f"{view}/next".encode()
        tx = self._client.transactions
        for _ in range(20):
            current = await self._link.call(self._client.get, current_key)
            counter = await self._link.call(self._client.get, next_key)
            allocated = max(int(counter.value) if counter else 0, int(current.value) if current else 0) + 1
            ok, _ = await self._link.call(
                self._client.transaction,
                compare=[tx.mod(next_key) == (counter.mod_revision if counter is not None else 0)],
                success=[tx.put(next_key, str(allocated).encode())],
                failure=[],
            )
            if ok:
                return allocated
        raise Conflict(f"could not allocate a data version of view {view!r}: too many concurrent allocations")

    async def set_canary(self, service: str, canary: Canary | None, *, expected: Canary | None) -> None:
        await self._cas(
            self._canary + service.encode(),
            f"canary of service {service!r}",
            expected,
            Canary.from_json,
            canary.to_json() if canary is not None else None,
        )

    async def promote(self, service: str, canary: Canary) -> None:
        key = self._canary + service.encode()
        kv = await self._link.call(self._client.get, key)
        actual = Canary.from_json(kv.value) if kv is not None else None
        if actual != canary:
            raise conflict(f"canary of service {service!r}", canary, actual)
        candidate = self._snapshots + str(canary.candidate_version).encode()
        if await self._link.call(self._client.get, candidate) is None:
            raise NotFound(f"registry snapshot {canary.candidate_version} does not exist")
        cur = await self._link.call(self._client.get, self._current)
        base = int(cur.value) if cur is not None else None
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
            raise conflict(
                f"canary of service {service!r} or registry current", canary, "changed concurrently"
            )

    async def watermark(self, view: str) -> Watermark | None:
        kv = await self._link.call(self._client.get, self._data + f"{view}/watermark".encode())
        return Watermark.from_json(kv.value) if kv is not None else None

    async def set_watermark(self, view: str, mark: Watermark, *, expected: Watermark | None) -> None:
        key = self._data + f"{view}/watermark".encode()
        await self._cas(key, f"watermark of view {view!r}", expected, Watermark.from_json, mark.to_json())

    async def _cas(
        self, key: bytes, what: str, expected: Any, decode: Any, new: bytes | None, absent: Any = None
    ) -> None:
        """Write ``new`` to ``key`` (None: delete it) iff its value, decoded, is
        ``expected`` (``absent`` when there is no key) and nobody wrote it in between."""
        kv = await self._link.call(self._client.get, key)
        actual = decode(kv.value) if kv is not None else absent
        if actual != expected:
            raise conflict(what, expected, actual)
        tx = self._client.transactions
        ok, _ = await self._link.call(
            self._client.transaction,
            compare=[tx.mod(key) == (kv.mod_revision if kv is not None else 0)],
            success=[tx.put(key, new)] if new is not None else [tx.delete(key)],
            failure=[],
        )
        if not ok:
            raise conflict(what, expected, "changed concurrently")

    # -- change feed -----------------------------------------------------------------

    async def changes(self) -> AsyncIterator[None]:
        """Yield after every change under the project prefix, across etcd outages."""
        pause = RetryPause(_WATCH_RETRY_MIN_S, _WATCH_RETRY_MAX_S, _WATCH_STEADY_S)
        heartbeat = asyncio.create_task(self._heartbeat())
        armed = False
        try:
            while True:
                client = self._client  # the one this watch runs on (and fails on)
                pause.opening()
                try:
                    if self._revision == 0:
                        self._revision = await self._head_revision()
                    if not armed:
                        armed = True
                        yield None  # watching from self._revision: re-read what changed before
                    client = self._client  # (a call renewed it while the consumer ran?)
                    watch = watch_prefix(client, self._root, self._revision + 1, self._link.timeout)
                    async with contextlib.aclosing(watch):
                        async for events, progress in watch:
                            pause.confirmed()
                            self._link.touch()
                            self._revision = max(self._revision, progress)
                            for event in events:
                                self._revision = max(self._revision, event.kv.mod_revision)
                                self._forget(event.kv.key, event.kv.mod_revision)
                            if events:
                                pause.steady()
                                yield None
                except etcd_errors.RevisionCompactedError as e:
                    # The changes since self._revision are gone: re-read everything (the
                    # caller reads the latest state at each yield) and watch from there.
                    log.warning("etcd compacted past revision %d: re-reading the registry", self._revision)
                    metrics.REGISTRY_WATCH_LOST.labels("compacted").inc()
                    self._revision = e.compacted_revision - 1
                    self._cache.clear()  # changes of snapshot keys may be among those missed
                    yield None
                except WatchEnded as e:
                    # etcd still answers: watch again from the last revision seen (so
                    # nothing is missed), after a pause (etcd may cancel it again); on a
                    # new client (a new auth token) if etcd refused this one's token.
                    wait = pause.next()
                    log.warning(
                        "etcd registry watch lost (%s); watching again from revision %d in %.2f s",
                        e,
                        self._revision,
                        wait,
                    )
                    metrics.REGISTRY_WATCH_LOST.labels(e.cause).inc()
                    await asyncio.sleep(wait)
                    if self._link.authenticates and auth_expired(str(e)):
                        await self._link.renew(client)
                except (*ERRORS, Unavailable) as e:
                    metrics.REGISTRY_WATCH_LOST.labels("connection").inc()
                    if self._client is not client:  # closed under it: a call authenticated again
                        log.info("etcd registry watch lost (%s): its client was replaced", e)
                    else:
                        if self._link.connected:
                            log.warning(
                                "etcd registry watch lost (%s); serving the last snapshot, retrying", e
                            )
                        self._link.connected = False
                    await asyncio.sleep(pause.next())
                    await self._link.renew(client)  # unless a failed call replaced it already
        finally:
            heartbeat.cancel()

    async def _head_revision(self) -> int:
        res = await self._link.call(self._client.get_prefix, self._current, keys_only=True)
        return int(res.header.revision)

    async def _heartbeat(self) -> None:
        """Refresh ``last_contact`` while nothing changes (and notice outages)."""
        while True:
            await asyncio.sleep(self.heartbeat_interval)
            with contextlib.suppress(Unavailable):
                await self._head_revision()

    async def close(self) -> None:
        self._cache.clear()
        await self._link.close()
