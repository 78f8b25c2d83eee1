"""The Redis store's read round trip: the raw replies of one read's MGETs (one per view),
before they are decoded (``redis_wire.decode_rows``).

Standalone Redis: the MGETs of a read go out as one write on one pooled connection, or,
with auto-pipelining and few keys, in the shared write of the event-loop tick
(``redis_batch.py``). Redis Cluster (``cluster_get``): redis-py's pipeline of GETs, one
round trip per node, for the reads ``redis_cluster_read.py`` cannot answer by its map.
Also the SCAN of a data version's keys (dropping or expiring the version).
"""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ResponseError

from featurestore.sources.redis_batch import MAX_KEYS as AUTO_PIPELINE_MAX_KEYS
from featurestore.sources.redis_batch import AutoPipeline
from featurestore.sources.redis_connection import classify
from featurestore.sources.redis_pool import LeanPool

Mget = tuple[bytes, int]  # one view's MGET packed (``redis_wire.KeyNames.mget``), how many keys it reads


async def pooled_mget(
    pool: LeanPool, auto: AutoPipeline | None, wire: list[Mget | None]
) -> list[list[bytes | None]]:
    commands = [m for m in wire if m is not None]
    if not commands:
        return [[] for _ in wire]
    packed = b"".join([m[0] for m in commands])
    if auto is not None and (count := sum([m[1] for m in commands])) <= AUTO_PIPELINE_MAX_KEYS:
        it = iter(await auto.mget_packed(packed, len(commands), count))
    else:
        it = iter(await exchange(pool, packed, len(commands)))
    return [next(it) if m is not None else [] for m in wire]


async def exchange(pool: LeanPool, packed: bytes, replies: int) -> list[Any]:
    """Send ``packed`` on a pooled connection and read its ``replies`` replies; the
    first error reply is raised (after every reply was read: the connection stays in
    step)."""
    conn = await pool.acquire()
    answer: list[Any] = []
    try:
        await conn.request(packed, (replies,), lambda _, got: answer.extend(got))
    except BaseException:
        # Given up before the replies came: the next user of this connection must not get them.
        conn.give_up()
        raise
    finally:
        pool.release(conn)
    for reply in answer:
        if isinstance(reply, ResponseError):
            raise classify(reply)
    return answer


async def cluster_get(client: RedisCluster, wire: list[list[str]]) -> list[list[bytes | None]]:
    pipe = client.pipeline()
    for keys in wire:
        for k in keys:
            pipe.get(k)
    flat = await pipe.execute(raise_on_error=True)
    out, i = [], 0
    for keys in wire:
        out.append(flat[i : i + len(keys)])
        i += len(keys)
    return out


async def for_version_keys(client: Redis | RedisCluster, prefix: str, op: Any) -> int:
    """Apply ``op(pipe, key)`` to every key under ``prefix`` (a data version's rows), a
    pipeline per 1,000 keys SCAN finds; how many keys."""
    pattern = _glob_escape(prefix) + "*"
    n = 0
    batch: list[bytes] = []
    async for key in client.scan_iter(match=pattern, count=1000):
        batch.append(key)
        if len(batch) >= 1000:
            n += await _apply(client, batch, op)
            batch = []
    if batch:
        n += await _apply(client, batch, op)
    return n


async def _apply(client: Redis | RedisCluster, keys: list[bytes], op: Any) -> int:
    pipe = client.pipeline(transaction=False)
    for k in keys:
        op(pipe, k)
    await pipe.execute()
    return len(keys)


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)
