"""The etcd registry's change feed: a watch of the project prefix kept alive across etcd
outages, cancelled and ended watches, compactions, and an etcd that lost its data.

``changes`` watches the project prefix from the last revision it has seen. When etcd
goes away the watch raises; it is re-established from that revision, on a new client,
retrying every 0.1 s doubling to 0.5 s (jittered), so no change is missed and a change
published once etcd is back reaches every server within about half a second. A watch
etcd cancels or ends (``etcd_watch.WatchEnded``) is opened again from that revision on
the same client (on a new one, authenticating again, when etcd no longer takes its auth
token); one compacted past it re-reads everything. Progress notifications move that
revision on while nothing under the prefix changes. A light poll (the heartbeat) keeps
``last_contact`` fresh while nothing changes, which is how a server reports how stale its
registry view may be.

An etcd that comes back *behind* the revision seen (rebuilt empty after a data loss, or
restored from a backup: ``etcdctl snapshot restore`` keeps the backup's revision) would
take a watch from that revision and send nothing until its revision got that far,
possibly millions of writes later, while the server kept serving its old snapshot and
looked healthy. So is a different cluster answering at the endpoint. Every linearizable
read of the feed (the heartbeat, each re-established watch's first read) compares its
response header with what was seen: a revision below it, or another cluster id, is an
``EtcdReset``: the cache is dropped, the registry is read again in full, watched from the
new head, counted as ``featurestore_registry_watch_lost_total{cause="reset"}`` and logged.
(A watch response's header is not compared: a lagging member's watch may be a little
behind; a linearizable read never is.)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from aetcd import exceptions as etcd_errors

from featurestore import metrics
from featurestore.definitions.snapshot import RegistrySnapshot
from featurestore.errors import PermissionDenied, Unauthenticated, Unavailable
from featurestore.registry.etcd_client import ERRORS, EtcdLink, auth_expired
from featurestore.registry.etcd_watch import RetryPause, WatchEnded, watch_prefix
from featurestore.registry.snapshot_cache import SnapshotCache

# etcd answering that it refuses the registry's user (``etcd_client.auth_refusal``)
_REFUSED = (Unauthenticated, PermissionDenied)

# The registry's logger (one name for the whole backend: operators filter on it).
log = logging.getLogger("featurestore.registry.etcd")

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


class EtcdReset(Exception):
    """etcd is behind the revision the feed has seen, or another cluster answers."""

    def __init__(self, reason: str, revision: int, cluster: int) -> None:
        super().__init__(reason)
        self.revision = revision  # etcd's head now
        self.cluster = cluster


class EtcdChangeFeed:
    """``changes`` of ``EtcdRegistry`` (which sets these attributes)."""

    _link: EtcdLink
    _root: bytes
    _current: bytes
    _cache: SnapshotCache[RegistrySnapshot]
    _changed: dict[int, int]  # version -> revision of its key's last change seen
    _revision: int  # highest revision seen by the watch
    _cluster: int | None  # the cluster id of the etcd that revision is of
    _reset: EtcdReset | None  # found by the heartbeat, for the feed to act on
    _reset_found: asyncio.Event
    _resets: int  # resets acted on (a heartbeat's read sent before one is not compared)
    heartbeat_interval: float

    def _forget(self, key: bytes, revision: int) -> None: ...

    async def changes(self) -> AsyncIterator[None]:
        """Yield after every change under the project prefix, across etcd outages."""
        pause = RetryPause(_WATCH_RETRY_MIN_S, _WATCH_RETRY_MAX_S, _WATCH_STEADY_S)
        heartbeat = asyncio.create_task(self._heartbeat())
        armed = False
        try:
            while True:
                client = self._link.client  # the one this watch runs on (and fails on)
                pause.opening()
                try:
                    await self._check_head()
                    if not armed:
                        armed = True
                        yield None  # watching from self._revision: re-read what changed before
                    client = self._link.client  # (a call renewed it while the consumer ran?)
                    watch = watch_prefix(client, self._root, self._revision + 1, self._link.timeout)
                    async with contextlib.aclosing(watch):
                        while True:
                            events, progress = await self._unless_reset(anext(watch))
                            pause.confirmed()
                            self._link.touch()
                            self._revision = max(self._revision, progress)
                            for event in events:
                                self._revision = max(self._revision, event.kv.mod_revision)
                                self._forget(event.kv.key, event.kv.mod_revision)
                            if events:
                                pause.steady()
                                yield None
                except EtcdReset as e:
                    log.warning(
                        "etcd registry: %s: etcd lost its data or was restored from a backup; "
                        "re-reading the registry in full and watching from revision %d",
                        e,
                        e.revision,
                    )
                    metrics.REGISTRY_WATCH_LOST.labels("reset").inc()
                    self._reset = None
                    self._reset_found.clear()
                    self._resets += 1
                    self._revision, self._cluster = e.revision, e.cluster
                    self._cache.clear()  # the versions' numbers now name other snapshots
                    self._changed.clear()  # revisions of the old history
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
                    if self._link.client is not client:  # closed under it: a call authenticated again
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

    async def _check_head(self) -> None:
        """Before each watch: the head revision to watch from (the first time), or
        ``EtcdReset`` if etcd is now behind what was seen or is another cluster.
        ``WatchEnded`` (cancelled) if etcd refuses the registry's user the read (a
        permission revoked, a password changed: ``auth_refusal``), as it would the watch."""
        if self._reset is not None:
            raise self._reset
        seen = self._revision
        try:
            header = await self._head()
        except _REFUSED as e:
            raise WatchEnded("cancelled", f"{type(e).__name__}: {e}") from e
        if seen == 0:
            self._revision, self._cluster = int(header.revision), int(header.cluster_id)
        elif (reset := self._reset_in(header, seen)) is not None:
            raise reset

    async def _unless_reset(self, read: Any) -> Any:
        """``await read`` (the watch's next response), unless the heartbeat finds etcd
        reset first (then ``EtcdReset``: a watch from a revision etcd has not reached
        would wait for it, silent)."""
        if self._reset is not None:
            read.close()
            raise self._reset
        reading = asyncio.ensure_future(read)
        found = asyncio.ensure_future(self._reset_found.wait())
        try:
            await asyncio.wait({reading, found}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            found.cancel()
            if self._reset is not None or not reading.done():
                reading.cancel()  # (ends the watch: the caller opens a new one)
                await asyncio.gather(reading, return_exceptions=True)
        if self._reset is not None:
            raise self._reset
        return reading.result()

    def _reset_in(self, header: Any, seen: int) -> EtcdReset | None:
        """An ``EtcdReset`` if ``header`` (of a linearizable read sent after the feed had
        seen revision ``seen``) is of another cluster, or behind ``seen``."""
        revision, cluster = int(header.revision), int(header.cluster_id)
        if self._cluster is not None and cluster != self._cluster:
            why = f"another etcd cluster answers (cluster id {self._cluster:x}, now {cluster:x})"
            return EtcdReset(why, revision, cluster)
        if revision < seen:
            return EtcdReset(f"etcd's revision went back from {seen} to {revision}", revision, cluster)
        return None

    async def _head(self) -> Any:
        res = await self._link.call(self._link.client.get_prefix, self._current, keys_only=True)
        return res.header

    async def _heartbeat(self) -> None:
        """Refresh ``last_contact`` while nothing changes, notice outages, and notice an
        etcd reset while the watch waits for a revision etcd may never reach."""
        while True:
            await asyncio.sleep(self.heartbeat_interval)
            seen, resets = self._revision, self._resets  # before the read: its answer cannot be older
            with contextlib.suppress(Unavailable, *_REFUSED):
                header = await self._head()
                if seen and self._reset is None and resets == self._resets:
                    self._reset = self._reset_in(header, seen)
                    if self._reset is not None:
                        self._reset_found.set()
