"""The Redis store's read on a Cluster, on the read path's own connections: per read,
each key's slot, the keys grouped by the primary that owns the slot, one write of GETs
per node on a pooled ``ReadConnection`` to it (``redis_pool.LeanPool``: one pool per
node, TLS and AUTH as the standalone path), every node read at once, the replies put
back in key order. With ``auto_pipeline`` each node's GETs join the event-loop tick's
write to that node (``redis_batch.AutoPipeline``, one per node), as standalone MGETs do.

redis-py's ``ClusterPipeline`` (one GET per key as well) costs per command and per node
in Python (command objects, a lock, a connection checkout, an await per reply), not in
Redis. The store's CPU a batch-10 read of the demo's two views (``python -m
benchmarks.cluster_cost``, 2026-12-07 18:07, 5 rounds, a loaded 2-core VM): this path 161
µs at 1 read in flight, 77 at 32; the pipeline 766 and 797; one Redis 97 and 51. Without
auto-pipelining, 155 at 32 in flight: the shared writes per node save most of the rest.

The slot map is redis-py's: its cluster client's slot cache (``nodes_manager``, filled
by CLUSTER SLOTS), copied into one list of 16,384 pools. A stale map cannot give a wrong
answer: a node asked for a slot it does not own replies MOVED, or ASK while the slot
migrates and the key has left, naming the node to ask. Such keys are asked again of
that node at once (ASKING before each GET after an ASK), and a MOVED has the map
refreshed off the hot path (at most every ``REFRESH_INTERVAL``). A read meeting anything
else of a cluster in flux (TRYAGAIN, CLUSTERDOWN, a second redirection), a node refusing
connections or a slot no node serves is read again through redis-py's pipeline
(``cluster_get``), and the map refreshed; so are reads before the map is first built.
A read given up on (its deadline) drops the sockets it waited on, as on one Redis.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from binascii import crc_hqx
from collections.abc import Callable
from functools import partial
from typing import Any, Final

from redis import exceptions as redis_errors
from redis.asyncio.cluster import RedisCluster

from featurestore.sources.redis_batch import MAX_KEYS as AUTO_PIPELINE_MAX_KEYS
from featurestore.sources.redis_batch import AutoPipeline, Counters
from featurestore.sources.redis_connection import ReadConnection, Target, classify
from featurestore.sources.redis_options import RedisOptions
from featurestore.sources.redis_pool import CONNECTION_ERRORS, NOT_RETRIED, LeanPool
from featurestore.sources.redis_read import cluster_get

log = logging.getLogger(__name__)
SLOTS: Final = 16384
_GET: Final = b"*2\r\n$3\r\nGET\r\n$%d\r\n%s\r\n"
_ASKING: Final = b"*1\r\n$6\r\nASKING\r\n"
Pools = dict[tuple[str, int], "LeanPool"]  # per node (host, port), its pool
# The error replies of a cluster in flux. MOVED and ASK are followed here, once: redis-py
# 8.1's asyncio client sends ASKING on one pooled connection and the command on another,
# so a key that left a migrating slot failed every read, 10 of 10 ("TTL exhausted",
# 2026-12-07). The others, and a second redirection, send the read through redis-py.
REDIRECTS: Final = ("MOVED", "ASK", "TRYAGAIN", "CLUSTERDOWN")
# At most one refresh of the map this often: a resharding moves slot after slot (a MOVED
# each, to every reader), and each refresh also makes redis-py's client reconnect its
# pooled sockets (NodesManager.set_nodes).
REFRESH_INTERVAL: Final = 0.1
# A read given up at its deadline refreshes the map, at most this often (not at every miss:
# an overload misses many): a primary that hangs while its replica takes over sends no
# MOVED and fails no connect (review s56: its keys missed every deadline; now back in ~3 s).
MISSED_REFRESH_INTERVAL: Final = 1.0


def key_slot(key: bytes) -> int:
    """A key's hash slot as Redis defines it: CRC-16/XMODEM (``binascii.crc_hqx``, in C)
    of the key, or of its hash tag, the text between its first ``{`` and the first ``}``
    after it when that is not empty; modulo 16,384."""
    start = key.find(b"{")
    if start != -1:
        end = key.find(b"}", start + 1)
        if end > start + 1:
            key = key[start + 1 : end]
    return crc_hqx(key, 0) & (SLOTS - 1)


class Stale(Exception):
    """This read cannot be answered by the map: read it through redis-py, and refresh
    the map."""


class ClusterReader:
    """One store's Cluster reads; ``get`` is ``redis_read.cluster_get`` on lean
    connections."""

    def __init__(
        self,
        client: RedisCluster,
        options: RedisOptions,
        opened: Callable[[], None] | None = None,
        counters: Counters | None = None,
        reread: Callable[[str], None] | None = None,
    ) -> None:
        """``client``: the store's redis-py cluster client (its slot map, and the reads
        that fall back); ``options``: the store's, whose URL's TLS, AUTH and client name
        every node's connections use (as ``LeanPool``'s), ``pool_size`` of them per node,
        and whether each node's reads are auto-pipelined; ``opened``: called for every
        socket opened, ``counters``: auto-pipelining's (``AutoPipeline``'s, every node's);
        ``reread``: called with ``"redirected"`` for a read that followed a MOVED or an ASK,
        ``"fallback"`` for one read again through redis-py, ``"unmapped"`` for one read
        through redis-py before the map was built (a metric)."""
        self._reread = reread or (lambda _: None)
        self._counters = counters
        self._client = client
        timeout = options.connect_timeout_ms / 1000
        self._target = Target.from_url(options.url, timeout, **options.connection_kwargs())
        self._size = options.pool_size
        self._opened = opened
        self._hold = options.hold_iterations if options.auto_pipeline else None
        self._autos: dict[LeanPool, AutoPipeline] = {}  # per pool, with auto_pipeline
        self._owners: list[LeanPool | None] | None = None  # per slot, its primary's pool
        self._pools: Pools = {}
        self._retired: list[LeanPool] = []  # pools of nodes that left, being closed
        self._refreshing: asyncio.Task[None] | None = None
        self._again = False  # a refresh was asked for while one ran
        self._last = 0.0  # when the last refresh began (monotonic)
        self._missed_at = 0.0  # when a missed deadline last asked for one
        self._closed = False
        self.lean = True  # False: every read through redis-py (benchmarks compare the two)
        self.redirected = 0  # reads that followed a MOVED or an ASK
        self.fallbacks = 0  # reads read again through redis-py

    async def get(self, wire: list[list[str]]) -> list[list[bytes | None]]:
        """Per key list, the values of its keys (None: no such key), in order."""
        owners = self._owners
        if self._closed:  # (redis-py's client would open connections nobody closes)
            raise redis_errors.ConnectionError("the store is closed")
        if owners is None or not self.lean:
            if self.lean:
                self._reread("unmapped")
                self.refresh()
            return await cluster_get(self._client, wire)
        keys = [k.encode() for keys in wire for k in keys]
        if not keys:  # (as the standalone path: no key, no round trip)
            return [[] for _ in wire]
        try:
            flat = await self._by_map(owners, keys)
        except Stale:
            if self._closed:
                raise redis_errors.ConnectionError("the store is closed") from None
            self.fallbacks += 1
            self._reread("fallback")
            self.refresh()
            return await cluster_get(self._client, wire)
        except redis_errors.TimeoutError:  # a connect timed out (a host gone silent, failed over?)
            self.refresh()  # not read again: the wait would double (redis_pool.NOT_RETRIED)
            raise
        except asyncio.CancelledError:  # given up at its deadline: a node hung, failed over?
            if (now := time.monotonic()) - self._missed_at >= MISSED_REFRESH_INTERVAL:
                self._missed_at = now
                self.refresh()
            raise
        out, i = [], 0
        for some in wire:
            out.append(flat[i : i + len(some)])
            i += len(some)
        return out

    async def _by_map(self, owners: list[LeanPool | None], keys: list[bytes]) -> list[Any]:
        """The values of ``keys`` by the map ``owners``: a write of GETs per node, every
        node at once; the keys redirected asked again of the node named (``Stale``: the
        read cannot be answered so)."""
        groups: dict[LeanPool | None, list[int]] = {}
        for i, key in enumerate(keys):
            pool = owners[key_slot(key) if b"{" in key else crc_hqx(key, 0) & (SLOTS - 1)]
            group = groups.get(pool)
            if group is None:
                groups[pool] = [i]
            else:
                group.append(i)
        if self._autos and None not in groups and max(map(len, groups.values())) <= AUTO_PIPELINE_MAX_KEYS:
            try:
                return await self._shared(groups, keys)  # type: ignore[arg-type]
            except redis_errors.ResponseError as e:
                if not str(e).startswith(REDIRECTS):
                    raise
                # a node redirected a key: read again below, where each key's reply says which
        flat: list[Any] = [None] * len(keys)
        await _gets(groups, keys, flat, b"")
        moved: dict[LeanPool | None, list[int]] = {}
        asked: dict[LeanPool | None, list[int]] = {}
        for i, value in enumerate(flat):
            if isinstance(value, redis_errors.ResponseError):
                kind, _, rest = str(value).partition(" ")
                host, _, port = rest.rpartition(" ")[2].rpartition(":")
                if kind not in ("MOVED", "ASK") or not host:  # (no host: "the node you asked")
                    raise Stale(str(value)) if kind in REDIRECTS else classify(value)
                (moved if kind == "MOVED" else asked).setdefault(self._pool((host, int(port))), []).append(i)
        if moved or asked:
            self.redirected += 1
            self._reread("redirected")
            if moved:
                self.refresh()
            await _gets(moved, keys, flat, b"")
            await _gets(asked, keys, flat, _ASKING)
            for i in (i for again in (moved, asked) for at in again.values() for i in at):
                if isinstance(flat[i], redis_errors.ResponseError):
                    error = flat[i]
                    raise Stale(str(error)) if str(error).startswith(REDIRECTS) else classify(error)
        return flat

    async def _shared(self, groups: dict[LeanPool, list[int]], keys: list[bytes]) -> list[Any]:
        """``_by_map``'s first round with auto-pipelining: each node's GETs join the write
        of the event-loop tick to that node (``AutoPipeline.enqueue``), as a standalone
        read's MGETs do; every node's reply awaited as a future, with no task. An error
        reply is raised (the first of a node's), a redirection's too."""
        waits: list[tuple[AutoPipeline, Any, asyncio.Future[list[Any]]]] = []
        try:
            for pool, at in groups.items():
                auto = self._autos[pool]
                packed = b"".join([_GET % (len(keys[i]), keys[i]) for i in at])
                waits.append((auto, *auto.enqueue(packed, len(at), len(at))))
            flat: list[Any] = [None] * len(keys)
            for (_, _, fut), at in zip(waits, groups.values(), strict=True):
                for i, value in zip(at, await fut, strict=True):
                    flat[i] = value
            return flat
        except NOT_RETRIED:
            raise
        except CONNECTION_ERRORS as e:  # a node gone, failed over, or closed an idle socket
            for pool in groups:
                pool.reset()
            raise Stale(repr(e)) from e
        finally:
            for auto, batch, fut in waits:
                if not fut.done() or fut.cancelled():  # given up on (the deadline), or another node failed
                    auto.gave_up(batch, fut)
                else:
                    fut.exception()  # (retrieved: a failed send is reported once, above)

    def refresh(self) -> None:
        """Build the map again off the hot path: now, or when the refresh under way ends."""
        if self._closed:
            return
        if self._refreshing is not None and not self._refreshing.done():
            self._again = True
            return
        self._refreshing = asyncio.get_running_loop().create_task(self._refresh(), name="redis-cluster-map")

    async def mapped(self) -> bool:
        """Wait for the refresh under way, if any; whether reads go by the map now."""
        while self._refreshing is not None and not self._refreshing.done():
            await asyncio.wait([self._refreshing])
        return self._owners is not None

    async def _refresh(self) -> None:
        while True:
            self._again = False
            await asyncio.sleep(max(0.0, self._last + REFRESH_INTERVAL - time.monotonic()))
            self._last = time.monotonic()
            try:
                await self._client.initialize()  # CLUSTER SLOTS the first time, a no-op after
                if self._owners is not None:  # a refresh (the first map is the one just asked)
                    await self._client.nodes_manager.initialize()  # CLUSTER SLOTS again
                await self._install(self._client.nodes_manager.slots_cache)
            except Exception as e:  # the map stays; the next read that falls back asks again
                log.info("redis cluster: the slot map was not refreshed: %r", e)
            if not self._again or self._closed:
                return

    async def _install(self, slots: dict[int, list[Any]]) -> None:
        """Per slot, the pool of its primary (a ``ClusterNode``'s ``host``/``port``, first
        of its slot's nodes); a node's pool is kept across refreshes, a gone node's closed."""
        pools: Pools = {}
        owners: list[LeanPool | None] = [None] * SLOTS
        for slot, nodes in slots.items():
            if nodes:
                where = (str(nodes[0].host), int(nodes[0].port))
                pools[where] = owners[slot] = pools.get(where) or self._pool(where)
        gone = [pool for where, pool in self._pools.items() if where not in pools]
        if self._owners is not None and owners != self._owners:
            log.info("redis cluster: slot map changed (%d nodes)", len(pools))
        self._owners, self._pools = owners, pools
        self._retired.extend(gone)  # (closed by close() too, if it cancels this refresh)
        for pool in gone:  # a read on it fails over to redis-py
            await self._close(pool)
            self._retired.remove(pool)

    async def _close(self, pool: LeanPool) -> None:
        auto = self._autos.pop(pool, None)
        if auto is not None:
            await auto.close()
        await pool.close()

    def _pool(self, where: tuple[str, int]) -> LeanPool:
        """The pool of the node at ``where``, made on first use: a node a refresh found,
        or one a MOVED or an ASK names that owns no slot yet (a node added to reshard)."""
        pool = self._pools.get(where)
        if pool is None:
            if self._closed:  # (a redirected read during close: no pool nobody closes)
                raise redis_errors.ConnectionError("the store is closed")
            host, port = where
            tls_name = host if self._target.tls is not None else None
            target = dataclasses.replace(self._target, host=host, port=port, server_hostname=tls_name)
            pool = self._pools[where] = LeanPool(target, self._size, opened=self._opened)
            if self._hold is not None:
                self._autos[pool] = AutoPipeline(pool, self._hold, self._counters)
        return pool

    def reset(self) -> None:
        """Drop every idle socket (after an outage): they reconnect on next use; and build
        the map again (the outage may have been a failover)."""
        for pool in self._pools.values():
            pool.reset()
        self.refresh()

    async def close(self) -> None:
        self._closed = True
        if self._refreshing is not None:
            self._refreshing.cancel()
            await asyncio.wait([self._refreshing])
        for pool in [*self._pools.values(), *self._retired]:  # (closing a pool twice is harmless)
            await self._close(pool)
        self._pools.clear()
        self._retired.clear()
        self._owners = None


async def _gets(
    groups: dict[LeanPool | None, list[int]], keys: list[bytes], into: list[Any], before: bytes
) -> None:
    """GET each group's ``keys`` (by position) on a connection of its pool, every pool
    at once, each GET after ``before`` (a command packed, or nothing); the replies into
    ``into`` at the keys' positions, error replies too."""
    if not groups:
        return
    if None in groups:  # a slot no node served when the map was built
        raise Stale("a slot is not covered by the map")
    per = 2 if before else 1  # replies a key
    sends = [
        (pool, b"".join([before + _GET % (len(keys[i]), keys[i]) for i in at]), len(at) * per)
        for pool, at in groups.items()
        if pool is not None
    ]
    try:
        replies = await _exchange_all(sends)
    except NOT_RETRIED:
        raise
    except CONNECTION_ERRORS as e:  # a node gone, failed over, or closed an idle socket
        for pool, _, _ in sends:
            pool.reset()
        raise Stale(repr(e)) from e
    for at, got in zip(groups.values(), replies, strict=True):
        for i, value in zip(at, got[per - 1 :: per], strict=True):
            into[i] = value


async def _exchange_all(sends: list[tuple[LeanPool, bytes, int]]) -> list[list[Any]]:
    """Each ``(pool, packed, replies)`` sent on a connection of its pool, all at once;
    their replies, in order, error replies among them.

    A node with an open idle connection is written to at once (``ReadConnection.submit``)
    and its replies awaited as a future, with no task; only a node whose pool has none
    (the first reads, after a reconnect, all busy) gets a task (``_slow``)."""
    taken: list[tuple[LeanPool, ReadConnection, asyncio.Future[None]]] = []
    tasks: list[asyncio.Task[None]] = []
    replies: list[list[Any]] = [[] for _ in sends]
    try:
        for (pool, packed, n), got in zip(sends, replies, strict=True):
            conn = pool.take()
            if conn is None:
                tasks.append(asyncio.ensure_future(_slow(pool, packed, n, got)))
            else:
                taken.append((pool, conn, conn.submit(packed, (n,), partial(_extend, got))))
        if tasks:
            await asyncio.gather(*(fut for _, _, fut in taken), *tasks)
        else:
            for _, _, fut in taken:
                await fut
    finally:
        for pool, conn, fut in taken:
            if not fut.done() or fut.cancelled():  # given up on (the deadline), or another node failed
                fut.cancel()
                conn.give_up()  # its socket goes: the replies must not reach the next read
            else:
                fut.exception()  # (retrieved: a socket lost is reported once, above)
            pool.release(conn)
        for task in tasks:
            task.cancel()  # (done: nothing; waiting: it gives its connection up)
    return replies


async def _slow(pool: LeanPool, packed: bytes, n: int, into: list[Any]) -> None:
    """``exchange`` on a connection the pool opens or waits for; error replies kept."""
    conn = await pool.acquire()
    try:
        await conn.request(packed, (n,), partial(_extend, into))
    except BaseException:
        conn.give_up()
        raise
    finally:
        pool.release(conn)


def _extend(into: list[Any], _group: int, replies: list[Any]) -> None:
    into.extend(replies)
