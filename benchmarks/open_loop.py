"""An open-loop load generator: joins sent on a fixed schedule whatever the answers, from
several processes, over HTTP/1.1 keep-alive connections or gRPC channels.

At most ``conns`` requests are in flight (a caller's connection pool: HTTP connections, or
as many gRPC calls over 16 channels a process); a request waits for a free one, and its
latency runs from its scheduled time, so the wait counts (no coordinated omission). The
server's shedding limit, floor and event loop lag are read from its /metrics once a
second meanwhile. Used by benchmarks.overload (and ``bodies``/``exchange``/``sleep_until``
by benchmarks.store_faults).
"""

from __future__ import annotations

import asyncio
import http.client
import json
import multiprocessing as mp
import random
import re
import threading
import time
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

from featurestore.demo.data import FEATURE_REFS

TIMER_STEP = 0.0015  # what a uvloop sleep can end early by (whole milliseconds, rounded down)


async def sleep_until(due: float, clock: Callable[[], float]) -> None:
    """Until ``clock()`` reaches ``due``, never before: one sleep of the delay can end up to
    1.5 ms early (uvloop's whole-millisecond timers, from a loop time rounded down), and a
    request sent early reads shorter from its schedule than from its write. Each sleep
    overshoots by a timer step rather than sleeping again for the rest: a sleep of under a
    millisecond returns at once on uvloop, and that loop spun (the load processes' CPU 5 ->
    10 s a run, on the server's cores). Late is counted by the callers, from the schedule."""
    while (delay := due - clock()) > 0:  # noqa: ASYNC110 (a deadline, not an event)
        await asyncio.sleep(delay + TIMER_STEP)


def bodies(batch: int, count: int, seed: int, port: int) -> list[bytes]:
    """``count`` whole HTTP join requests of ``batch`` random user ids, all demo features."""
    rnd = random.Random(seed)
    out = []
    for _ in range(count):
        ids = [rnd.randint(1, 100_000) for _ in range(batch)]
        body = json.dumps(
            {"features": FEATURE_REFS, "entities": {"user_id": ids}}, separators=(",", ":")
        ).encode()
        out.append(
            b"POST /v1/feature/join HTTP/1.1\r\nhost: 127.0.0.1:%d\r\ncontent-type: application/json\r\n"
            b"content-length: %d\r\n\r\n%s" % (port, len(body), body)
        )
    return out


async def exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, raw: bytes
) -> tuple[bytes, bytes]:
    """One request on a keep-alive connection: the answer's status code and body."""
    writer.write(raw)
    status = (await reader.readline()).split(b" ", 2)[1]
    length = 0
    while (line := await reader.readline()) not in (b"\r\n", b""):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    return status, await reader.readexactly(length)


class Transport(Protocol):
    """How one load process sends a join: ``open`` its ``conns`` slots, then ``call``
    with a free one (from ``acquire``) the join scheduled at ``due``; ``call`` gives back
    the outcome (an HTTP status code, a gRPC status name, ``error``, or ``EXPIRED``: its
    deadline passed while it waited for a slot, so it was not sent) and the slot to return
    (a new one after a broken connection)."""

    ok: str  # the outcome of an answered join
    shed: str  # the outcome of a join shed under overload

    async def open(self, conns: int) -> None: ...
    async def acquire(self) -> Any: ...
    async def call(self, slot: Any, i: int, due: float) -> tuple[str, Any]: ...
    def release(self, slot: Any) -> None: ...
    async def close(self) -> None: ...


class Http:
    """HTTP/1.1: one request at a time on each of ``conns`` keep-alive connections."""

    ok, shed = "200", "503"

    def __init__(self, port: int, batch: int, seed: int, deadline: float | None = None) -> None:
        if deadline is not None:
            raise ValueError("a client deadline is a gRPC option here (HTTP's callers wait for the answer)")
        self.port, self.reqs = port, bodies(batch, 512, seed, port)
        self.idle: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = asyncio.Queue()

    async def open(self, conns: int) -> None:
        for _ in range(conns):
            self.idle.put_nowait(await asyncio.open_connection("127.0.0.1", self.port))

    async def acquire(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await self.idle.get()

    async def call(self, slot: Any, i: int, due: float) -> tuple[str, Any]:
        reader, writer = slot
        try:
            status, body = await exchange(reader, writer, self.reqs[i % len(self.reqs)])
        except (ConnectionError, asyncio.IncompleteReadError, IndexError):
            writer.close()
            return "error", await asyncio.open_connection("127.0.0.1", self.port)
        end = body.find(RESULTS_MARK)  # the metadata comes first: searched up to the results
        if status == b"200" and PARTIAL_MARK in (body if end < 0 else body[:end]):
            return PARTIAL, slot
        return status.decode(), slot

    def release(self, slot: Any) -> None:
        self.idle.put_nowait(slot)

    async def close(self) -> None:
        while not self.idle.empty():
            self.idle.get_nowait()[1].close()


# Connections a load process opens: the kernel spreads them over the workers by a hash
# (SO_REUSEPORT), and with 8 in all (4 a process, grpc_load's default) one worker gets 6 or
# more of them in 29% of runs (binomial; review 32), at 3x the saturation rate while the
# other sees 1x. With 32 (16 a process) a 24-8 split or worse: 0.7%.
GRPC_CHANNELS = 16
HANG_GUARD = 30.0  # seconds: the deadline of a gRPC call sent without one of its caller's
EXPIRED = "EXPIRED"  # a call whose caller's deadline passed before a slot was free: not sent


class Grpc:
    """gRPC: at most ``conns`` calls in flight, over 16 channels of the process's own
    (HTTP/2 multiplexes them; the server allows limits.max_concurrent_streams, 1,024, a
    connection). Serialized requests in, answers not parsed (benchmarks.grpc_load's). No
    client deadline by default (the server's limits.deadline_ms applies, as to HTTP's
    requests; the calls carry a 30 s one only against a hang), or ``deadline`` seconds
    from the call's scheduled time, as a caller's own deadline runs from when it asks
    (the bundled client's from its ``join``): a call whose deadline passed while it waited
    for a slot is not sent (``EXPIRED``), one sent carries what is left of it, and ends
    DEADLINE_EXCEEDED at the client past it whatever the server does."""

    ok, shed = "OK", "RESOURCE_EXHAUSTED"

    def __init__(self, port: int, batch: int, seed: int, deadline: float | None = None) -> None:
        from benchmarks.grpc_load import requests

        self.deadline = deadline
        self.target, self.reqs = f"127.0.0.1:{port}", requests(batch, 512, seed)
        self.idle: asyncio.Queue[int] = asyncio.Queue()
        self.channels: list[Any] = []
        self.joins: list[Any] = []

    async def open(self, conns: int) -> None:
        import grpc

        from benchmarks.grpc_load import METHOD

        # own connections (grpc shares one per target otherwise): SO_REUSEPORT spreads them
        options = [("grpc.use_local_subchannel_pool", 1)]
        self.channels = [
            grpc.aio.insecure_channel(self.target, options=options) for _ in range(GRPC_CHANNELS)
        ]
        self.joins = [ch.unary_unary(METHOD) for ch in self.channels]
        for ch in self.channels:  # connected before the schedule starts
            await asyncio.wait_for(ch.channel_ready(), 10)
        for k in range(conns):
            self.idle.put_nowait(k)

    async def acquire(self) -> int:
        return await self.idle.get()

    async def call(self, slot: Any, i: int, due: float) -> tuple[str, Any]:
        import grpc

        timeout = HANG_GUARD if self.deadline is None else due + self.deadline - time.perf_counter()
        if timeout <= 0:
            return EXPIRED, slot
        try:
            await self.joins[slot % len(self.joins)](self.reqs[i % len(self.reqs)], timeout=timeout)
        except grpc.aio.AioRpcError as e:
            return e.code().name, slot
        return self.ok, slot

    def release(self, slot: Any) -> None:
        self.idle.put_nowait(slot)

    async def close(self) -> None:
        for ch in self.channels:
            await ch.close()


TRANSPORTS: dict[str, type[Http] | type[Grpc]] = {"http": Http, "grpc": Grpc}


async def _open_loop(
    transport: str,
    deadline: float | None,
    port: int,
    batch: int,
    phases: tuple[tuple[float, float], ...],
    conns: int,
    seed: int,
    start_at: float,
) -> list[dict[str, Any]]:
    """One schedule of ``phases`` ((rate, seconds), ...) from ``start_at`` (wall clock:
    every process keeps the same schedule) on the same connections; what each phase's
    requests got."""
    link: Transport = TRANSPORTS[transport](port, batch, seed, deadline)
    await link.open(conns)
    out = [
        {"answered": [], "served": [], "waits": [], "late": [], "held": 0.0, "counts": {}} for _ in phases
    ]  # answered: from the schedule; served: from the write; waits: for a connection (from the
    # schedule); late: the load process's own lateness, from the schedule to its request's first step
    # perf_counter, not loop.time(): uvloop's clock has millisecond steps and is read once
    # per loop iteration
    clock = time.perf_counter

    async def one(i: int, due: float, part: dict[str, Any]) -> None:
        part["late"].append(clock() - due)
        slot = await link.acquire()
        sent = clock()
        part["waits"].append(sent - due)
        outcome, slot = await link.call(slot, i, due)
        part["held"] += clock() - sent
        link.release(slot)
        counts = part["counts"]
        counts[outcome] = counts.get(outcome, 0) + 1
        if outcome == link.ok or outcome == PARTIAL:
            part["answered"].append(clock() - due)
            part["served"].append(clock() - sent)

    tasks = []
    if (late := time.time() - start_at) > 0:  # its first requests would go out in one burst
        raise RuntimeError(f"a load process was ready {late:.2f} s after the common start")
    start, i = clock() + (start_at - time.time()), 0
    try:
        for (rate, seconds), part in zip(phases, out, strict=True):
            for k in range(int(rate * seconds)):
                due = start + k / rate
                await sleep_until(due, clock)  # late is counted ("load late")
                tasks.append(asyncio.ensure_future(one(i, due, part)))
                i += 1
            start += seconds
        await asyncio.gather(*tasks)
    finally:
        await link.close()
    cpu = time.process_time()
    for part in out:
        part["cpu"] = cpu  # the process's CPU over the whole schedule (set-up included)
    return out


def _run(
    args: tuple[str, float | None, int, int, tuple[tuple[float, float], ...], int, int, float],
) -> list[dict[str, Any]]:
    import uvloop

    return uvloop.run(_open_loop(*args))


# When the processes' common schedule starts: after they have been spawned and have
# opened their connections (~1 s on this machine).
START_DELAY = 3.0


def open_loop(
    transport: str,
    port: int,
    metrics_port: int,
    batch: int,
    phases: tuple[tuple[float, float], ...],
    conns: int,
    procs: int,
    deadline: float | None = None,
) -> list[dict[str, Any]]:
    """The phases' schedule from ``procs`` processes, each a share of every rate, while
    the server's shedding limit and loop lag are read from /metrics once a second (one
    scrape: it runs on a worker's loop too). ``deadline``: gRPC calls' own (``Grpc``)."""
    share = tuple((rate / procs, seconds) for rate, seconds in phases)
    stop = threading.Event()
    start_at = time.time() + START_DELAY
    with ThreadPoolExecutor(1) as watcher, mp.get_context("spawn").Pool(procs) as pool:
        seen = watcher.submit(_watch_metrics, metrics_port, stop)
        try:
            args = [
                (transport, deadline, port, batch, share, conns // procs, 7 + i, start_at)
                for i in range(procs)
            ]
            parts = pool.map(_run, args)
        finally:
            stop.set()
        gauges = seen.result()
    link = TRANSPORTS[transport]
    out, begin = [], start_at
    for n, (rate, seconds) in enumerate(phases):
        # a gauge is up to 0.25 s old: a phase's first half second may show the one before
        during = [
            (limit, lag, floor) for t, limit, lag, floor in gauges if begin + 0.5 <= t < begin + seconds
        ]
        out.append(_summary([p[n] for p in parts], rate, during, link.ok, link.shed))
        begin += seconds
    return out


# An answer of 200 whose store reads missed the deadline (values UNAVAILABLE, metadata.partial
# true; docs/api.md): it counts as answered, at its latency, and is counted apart too (over
# HTTP; a gRPC answer is not parsed here, so its partial ones count as OK). A
# server past its saturation answers many of its joins so, at the deadline and cheaply (no
# rows decoded): at batch 1,000, 1,581-1,889 of ~2,400 answers at c=256 on 2026-12-07 06:48.
PARTIAL = "200 partial"
PARTIAL_MARK = b'"partial":true'
RESULTS_MARK = b'"results":'  # the metadata ends there (the whole body if it is not found)

GAUGE = re.compile(
    r"^(featurestore_join_inflight_limit|featurestore_join_inflight_floor|featurestore_event_loop_lag_seconds) (\S+)$",
    re.M,
)


def _watch_metrics(port: int, stop: threading.Event) -> list[tuple[float, float, float, float]]:
    """(wall time of the scrape, limit, lag, floor) once a second until ``stop``."""
    samples = []
    while not stop.wait(1.0):
        asked = time.time()
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                found = dict(GAUGE.findall(r.read().decode()))
        except (OSError, http.client.HTTPException):  # a scrape that failed under the overload
            continue
        limit = float(found["featurestore_join_inflight_limit"])
        lag, floor = (
            float(found["featurestore_event_loop_lag_seconds"]),
            float(found["featurestore_join_inflight_floor"]),
        )
        samples.append((asked, limit, lag, floor))
    return samples


def _summary(
    parts: list[dict[str, Any]], rate: float, gauges: list[tuple[float, float, float]], ok: str, shed: str
) -> dict[str, Any]:
    """A phase over every process: outcomes (``answered``, ``shed``, the rest by name),
    percentiles in ms, and the gauges' medians."""
    lat = sorted(x for p in parts for x in p["answered"])
    served = sorted(x for p in parts for x in p["served"])
    waits = sorted(x for p in parts for x in p["waits"])
    late = sorted(x for p in parts for x in p["late"])
    counts: dict[str, int] = {}
    for p in parts:
        for k, v in p["counts"].items():
            counts[k] = counts.get(k, 0) + v
    partial = counts.pop(PARTIAL, 0)
    answered, refused = counts.pop(ok, 0) + partial, counts.pop(shed, 0)

    def pct(q: float, xs: list[float] = lat) -> float | None:
        return round(xs[min(int(q * len(xs)), len(xs) - 1)] * 1000, 1) if xs else None

    limits = sorted(limit for limit, _, _ in gauges)
    lags = sorted(lag for _, lag, _ in gauges)
    floors = sorted(floor for _, _, floor in gauges)
    return {
        "rate": round(rate), "answered": answered, "partial": partial, "shed": refused, "other": counts,
        "p50_ms": pct(0.5), "p99_ms": pct(0.99), "p999_ms": pct(0.999),
        "served_p99_ms": pct(0.99, served), "served_p999_ms": pct(0.999, served),
        "wait_p50_ms": pct(0.5, waits), "wait_p99_ms": pct(0.99, waits),
        "late_p99_ms": pct(0.99, late), "late_p999_ms": pct(0.999, late),
        "load_cpu_s": round(sum(p["cpu"] for p in parts), 2),
        "held_mean_ms": round(sum(p["held"] for p in parts) / max(1, len(waits)) * 1000, 1),
        "limit_median": limits[len(limits) // 2] if limits else None,
        "lag_median_ms": round(lags[len(lags) // 2] * 1000, 1) if lags else None,
        "floor_median": floors[len(floors) // 2] if floors else None,
    }  # fmt: skip
