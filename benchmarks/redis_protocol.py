"""What the read path's own Redis connection (``sources/redis_connection.py``) saves: the
store's read path as it runs now, against redis-py's asyncio connection doing the same
reads, and against a bare sketch of the protocol (the floor of the approach).

Each "join" is what the server sends for two views: two MGETs of ``batch`` + 1 keys (the
rows and the layout marker) with demo-sized msgpack rows (not decoded, on any side).
``joins in flight`` tasks each run joins one after another, as request tasks do.

* redis-py: a pooled redis-py connection per join (``send_packed_command``, then
  ``read_response`` per reply: a stream reader and an await per reply), as the store read
  until 2026-12-05 when it did not auto-pipeline.
* store: the store's own path: reads of up to ``redis_batch.MAX_KEYS`` keys through its
  ``AutoPipeline`` (a future per join, one write per event-loop tick: the joins in flight
  share it; one join in flight is the gRPC case, where joins arrive a tick apart), larger
  ones on a connection of its ``LeanPool`` each.
* sketch: the protocol alone: no pool, no task per tick, no handshake, no deadline
  handling; one shared connection for small reads, one per task for large ones.

Reported: CPU time of the event-loop thread per join, median of ``--rounds`` interleaved
rounds.

    python -m benchmarks.redis_protocol [--rounds 5] [--joins 4000]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import hiredis
import msgspec
from redis.asyncio import Redis
from redis.exceptions import ResponseError

from benchmarks import report, stack
from featurestore.sources.redis_batch import MAX_KEYS, AutoPipeline
from featurestore.sources.redis_pool import LeanPool
from featurestore.sources.redis_read import pooled_mget
from featurestore.sources.redis_wire import pack_mget

KEYS = 1000
SCENARIOS = [(1, 1), (1, 16), (100, 1), (100, 16)]  # (batch, joins in flight)
Join = Callable[[int], Awaitable[Any]]


class LeanProtocol(asyncio.Protocol):
    """Replies parsed as they arrive, in order, into the waiting join's list; the
    commands of one event-loop tick go out in one write."""

    def __init__(self) -> None:
        self.reader = hiredis.Reader(replyError=ResponseError)
        self.pending: collections.deque[tuple[asyncio.Future[list[Any]], list[Any], int]] = (
            collections.deque()
        )
        self.transport: Any = None  # (uvloop's transports are not asyncio.Transport subclasses)
        self.buffer: list[bytes] = []

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        pending = self.pending
        while (reply := self.reader.gets()) is not False:
            fut, replies, want = pending[0]
            replies.append(reply)
            if len(replies) == want:
                pending.popleft()
                if not fut.done():
                    fut.set_result(replies)

    def call(self, packed: bytes, replies: int) -> asyncio.Future[list[Any]]:
        fut = asyncio.get_running_loop().create_future()
        self.pending.append((fut, [], replies))
        if not self.buffer:
            asyncio.get_running_loop().call_soon(self.flush)
        self.buffer.append(packed)
        return fut

    def flush(self) -> None:
        self.transport.write(b"".join(self.buffer))
        self.buffer.clear()


def auto_pipelined(batch: int) -> bool:
    """Whether the store coalesces a join of ``batch`` keys (two views, a marker each)."""
    return 2 * (batch + 1) <= MAX_KEYS


def join_keys(batch: int, i: int) -> list[list[str]]:
    ids = [(i * 7919 + k * 104729) % KEYS for k in range(batch)]
    return [[*(f"{v}:{x}" for x in ids), f"{v}:marker"] for v in ("p", "a")]


async def drive(join: Join, conc: int, joins: int) -> float:
    """CPU seconds of this thread per join: ``conc`` tasks, each one join after another."""
    per_task = max(1, joins // conc)

    async def task(k: int) -> None:
        for i in range(per_task):
            await join(k * per_task + i)

    t0 = time.thread_time()
    await asyncio.gather(*(task(k) for k in range(conc)))
    return (time.thread_time() - t0) / (per_task * conc)


async def redis_py(url: str, batch: int, conc: int, joins: int) -> float:
    from redis.asyncio import BlockingConnectionPool

    factory = BlockingConnectionPool.from_url(url, max_connections=conc, socket_timeout=None)
    idle: list[Any] = [factory.make_connection() for _ in range(conc)]  # type: ignore[no-untyped-call]
    try:

        async def join(i: int) -> Any:
            packed = b"".join(map(pack_mget, join_keys(batch, i)))
            conn = idle.pop()
            try:
                await conn.send_packed_command(packed, check_health=False)
                return [await conn.read_response() for _ in range(2)]
            finally:
                idle.append(conn)

        return await drive(join, conc, joins)
    finally:
        for conn in idle:
            await conn.disconnect()


async def store(url: str, batch: int, conc: int, joins: int) -> float:
    pool = LeanPool(url, conc)
    auto = AutoPipeline(pool)
    try:

        async def join(i: int) -> Any:
            wire: list[tuple[bytes, int] | None] = [(pack_mget(k), len(k)) for k in join_keys(batch, i)]
            return await pooled_mget(pool, auto, wire)

        return await drive(join, conc, joins)
    finally:
        await auto.close()
        await pool.close()


async def lean(url: str, batch: int, conc: int, joins: int) -> float:
    host, port = url.removeprefix("redis://").split("/")[0].split(":")
    loop = asyncio.get_running_loop()
    shared = auto_pipelined(batch)
    protos: list[LeanProtocol] = []
    try:
        for _ in range(1 if shared else conc):
            protos.append((await loop.create_connection(LeanProtocol, host, int(port)))[1])
        per_task = max(1, joins // conc)

        async def join(i: int) -> Any:
            proto = protos[0] if shared else protos[i // per_task]  # a large read: its task's own connection
            return await proto.call(b"".join(map(pack_mget, join_keys(batch, i))), 2)

        return await drive(join, conc, joins)
    finally:
        for p in protos:
            if p.transport is not None:
                p.transport.close()


async def fill(url: str) -> None:
    client = Redis.from_url(url)
    row = msgspec.msgpack.encode([0.0981, 12, 31.5, 4, 0.25, 7, 1.5, 1_704_111_542_000_000])
    await client.mset({f"{v}:{i}": row for v in ("p", "a") for i in range(KEYS)})
    await client.mset({"p:marker": b"layout", "a:marker": b"layout"})
    await client.aclose()


PATHS = {"redis_py": redis_py, "store": store, "sketch": lean}


async def measure(url: str, rounds: int, joins: int) -> list[dict[str, Any]]:
    await fill(url)
    out = []
    for batch, conc in SCENARIOS:
        for fn in PATHS.values():  # warm-up
            await fn(url, batch, conc, 500)
        got: dict[str, list[float]] = {name: [] for name in PATHS}
        for r in range(rounds):  # interleaved, the order turning by round
            names = list(PATHS)
            for name in names[r % 3 :] + names[: r % 3]:
                got[name].append(await PATHS[name](url, batch, conc, joins))
        out.append(
            {
                "batch": batch,
                "concurrency": conc,
                "path": "auto-pipelined" if auto_pipelined(batch) else "a connection per join",
                **{f"{name}_us": statistics.median(v) * 1e6 for name, v in got.items()},
            }
        )
        print(out[-1], flush=True)
    return out


def render(results: list[dict[str, Any]], command: str) -> list[str]:
    lines = [
        "## The read path's own Redis connection against redis-py's",
        "",
        f"* Run: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; command: `{command}`",
        "* One process on uvloop, one local redis-server; a join = two MGETs of batch + 1 keys",
        "  (demo-sized msgpack rows, not decoded). CPU time of the event-loop thread per join, median",
        "  of the rounds. redis-py: a pooled redis-py connection per join (send, then a read per",
        "  reply). Store: the store's path on its own connections (`sources/redis_connection.py`),",
        "  auto-pipelined up to 64 keys (one join in flight: each alone in its tick, as under gRPC;",
        "  16: they share a write, as under HTTP), else a pooled connection per join. Sketch: the",
        "  protocol alone (no pool, no task per tick, no handshake or deadline handling).",
        "",
        "| batch | joins in flight | store's path | redis-py µs/join | store µs/join | sketch µs/join |",
        "|---:|---:|---|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r['batch']} | {r['concurrency']} | {r['path']} | {r['redis_py_us']:.1f} | {r['store_us']:.1f} "
            f"| {r['sketch_us']:.1f} |"
        )
    return lines


async def main(a: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp, stack.redis(Path(tmp)) as url:
        results = await measure(url, a.rounds, a.joins)
    command = f"python -m benchmarks.redis_protocol --rounds {a.rounds} --joins {a.joins}"
    report.publish("redis-protocol.md", render(results, command))


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--joins", type=int, default=4000)
    import uvloop

    uvloop.run(main(ap.parse_args()))
