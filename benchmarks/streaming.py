"""Stream views (issue 12): processor throughput, event-to-servable latency, join QPS.

A. Throughput: N JSON events (10,000 users, times spread over the last 2 hours) are
   produced to a 3-partition topic of a Tansu broker first; then one processor
   (``StreamProcessor`` in this process, one thread) consumes them into a local Redis
   for a view of 4 aggregations x 3 windows (count, sum, max, last of ``amount`` over 5m,
   1h, 24h; 1-minute tiles). Events/s = N / (first message consumed .. every partition's
   mark at its last offset). Target: >= 50,000 events/s.
B. Latency: ``featurestore stream run`` as a child process while this process produces
   background events at R/s; every 50 ms a probe event for a fresh key goes out and the
   time until its tile is in Redis (polled every 0.5 ms) is its event-to-servable latency.
   Target: p99 <= 1 s at 10,000 events/s.
C. Join QPS, in process (the JoinEngine without HTTP, one asyncio loop, closed loop): a
   stream view of 5 aggregations x 3 windows (15 features) against a plain Redis view of
   15 float64 features over the same 10,000 keys, batch 1 and 100, no LRU cache on
   either; 6 interleaved rounds, the best of each. Target: the stream view at least half
   the plain view's QPS.

    python -m benchmarks.streaming                       # the issue's scale
    python -m benchmarks.streaming --events 50000 --latency-seconds 10 --join-seconds 3   # quick

Writes benchmarks/results/streaming.md (stitched into RESULTS.md) and prints it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from benchmarks.provenance import machine, source_state
from benchmarks.report import stitch
from tests.servers import RedisServer, TansuBroker
from tests.support import StreamProcessorProcess

RESULTS = Path(__file__).resolve().parent / "results" / "streaming.md"
USERS = 10_000
WINDOWS = ("5m", "1h", "24h")


def definitions(project: str, topic: str, functions: tuple[str, ...], plain: bool) -> dict[str, Any]:
    aggs = [
        {"name": f"{f}_{w}", "function": f, **({} if f == "count" else {"column": "amount"}), "window": w}
        for f in functions
        for w in WINDOWS
    ]
    doc: dict[str, Any] = {
        "project": project,
        "entities": [{"name": "user_id", "dtype": "int64"}],
        "stream_views": [
            {
                "name": "activity",
                "entities": ["user_id"],
                "tile": "1m",
                "allowed_lateness": "3h",
                "source": {"topic": topic, "key_fields": ["user_id"], "timestamp_field": "ts"},
                "aggregations": aggs,
            }
        ],
    }
    if plain:
        doc["feature_views"] = [
            {
                "name": "plain",
                "entities": ["user_id"],
                "features": [{"name": a["name"], "dtype": "float64"} for a in aggs],
            }
        ]
    return doc


def produce(
    bootstrap: str, topic: str, n: int, rate: float = 0.0, stop: threading.Event | None = None
) -> int:
    from confluent_kafka import Producer

    producer = Producer(
        {"bootstrap.servers": bootstrap, "linger.ms": 20, "queue.buffering.max.messages": 1_000_000}
    )
    rng = random.Random(1)
    now_ms = time.time_ns() // 1_000_000
    start = time.monotonic()
    sent = 0
    for i in range(n):
        if stop is not None and stop.is_set():
            break
        user = rng.randrange(USERS)
        ts = now_ms - rng.randrange(7_200_000) if not rate else time.time_ns() // 1_000_000
        value = b'{"user_id":%d,"ts":%d,"amount":%.2f}' % (user, ts, rng.uniform(1, 100))
        producer.produce(topic, key=b"%d" % user, value=value)
        sent += 1
        if i % 1000 == 0:
            producer.poll(0)
            if rate:
                wait = start + sent / rate - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
    producer.flush(60)
    return sent


def throughput(kafka: TansuBroker, redis: RedisServer, n: int) -> dict[str, Any]:
    from confluent_kafka.admin import AdminClient

    from featurestore.definitions.parser import parse_definitions
    from featurestore.streaming.processor import ProcessorOptions, StreamProcessor
    from featurestore.streaming.redis_store import RedisTileStore
    from lineage.kafka import KafkaSettings, ensure_topic

    topic = f"bench-{uuid.uuid4().hex[:6]}"
    project = f"b{uuid.uuid4().hex[:6]}"
    ensure_topic(AdminClient({"bootstrap.servers": kafka.bootstrap}), topic, 3, 1)
    t0 = time.perf_counter()
    produce(kafka.bootstrap, topic, n)
    produced = time.perf_counter() - t0
    view = parse_definitions(
        definitions(project, topic, ("count", "sum", "max", "last"), False), source="b"
    ).views["activity"]
    store = RedisTileStore("default", project, redis.url)
    proc = StreamProcessor(view, store, KafkaSettings(bootstrap_servers=kafka.bootstrap, session_timeout_ms=6000), project,
                           ProcessorOptions(batch_messages=5000, poll_seconds=0.05, lag_interval_seconds=60))  # fmt: skip
    stop = threading.Event()
    first: list[float] = []
    original = proc._aggregate

    def timed(messages: list[Any], acc: Any) -> Any:
        if not first:
            first.append(time.perf_counter())
        return original(messages, acc)

    proc._aggregate = timed  # type: ignore[method-assign]
    thread = threading.Thread(target=proc.run, args=(stop,))
    cpu0 = (time.process_time(), _cpu_seconds(redis.proc), _cpu_seconds(kafka.proc))
    thread.start()
    try:
        while sum(m.offset + 1 for m in store.marks(view, topic).values()) < n:
            time.sleep(0.01)
        done = time.perf_counter()
    finally:
        stop.set()
        thread.join(30)
    cpu = (
        time.process_time() - cpu0[0],
        _cpu_seconds(redis.proc) - cpu0[1],
        _cpu_seconds(kafka.proc) - cpu0[2],
    )
    elapsed = done - first[0]
    return {"events": n, "seconds": elapsed, "events_per_s": n / elapsed, "produce_s": produced,
            "cpu_processor_s": cpu[0], "cpu_redis_s": cpu[1], "cpu_broker_s": cpu[2],
            "events_per_processor_cpu_s": n / cpu[0], "project": project, "topic": topic}  # fmt: skip


def _cpu_seconds(proc: Any) -> float:
    """User + system CPU of a child process so far (/proc), 0 when unknown."""
    try:
        fields = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, AttributeError, IndexError, ValueError):
        return 0.0


def latency(
    kafka: TansuBroker, redis: RedisServer, rate: float, seconds: float, work: Path
) -> dict[str, Any]:
    import yaml
    from confluent_kafka import Producer
    from confluent_kafka.admin import AdminClient
    from redis import Redis

    from featurestore.definitions.parser import parse_definitions
    from lineage.kafka import ensure_topic

    topic = f"lat-{uuid.uuid4().hex[:6]}"
    project = f"l{uuid.uuid4().hex[:6]}"
    ensure_topic(AdminClient({"bootstrap.servers": kafka.bootstrap}), topic, 3, 1)
    doc = definitions(project, topic, ("count", "sum", "max", "last"), False)
    (work / "lat.yaml").write_text(yaml.safe_dump(doc))
    view = parse_definitions(doc, source="b").views["activity"]
    (work / "lat-config.yaml").write_text(
        f"project: {project}\nstores: {{default: {{kind: redis, url: '{redis.url}'}}}}\n"
        f"stream: {{poll_seconds: 0.01, kafka: {{bootstrap_servers: '{kafka.bootstrap}', session_timeout_ms: 6000}}}}\n"
    )
    proc = StreamProcessorProcess(["--config", str(work / "lat-config.yaml"), "--definitions", str(work / "lat.yaml"),
                                   "--view", "activity"], work / "lat-processor.log").start()  # fmt: skip
    r = Redis.from_url(redis.url)
    prefix = f"fs:{project}:activity:t{view.layout}:k:"
    stop = threading.Event()
    background = threading.Thread(
        target=produce, args=(kafka.bootstrap, topic, int(rate * seconds * 2), rate, stop)
    )
    probes = Producer({"bootstrap.servers": kafka.bootstrap, "linger.ms": 0})
    samples: list[float] = []
    try:
        time.sleep(3)  # the group joined
        background.start()
        end = time.monotonic() + seconds
        i = 0
        while time.monotonic() < end:
            i += 1
            key = 10_000_000 + i
            t0 = time.perf_counter()
            probes.produce(
                topic,
                key=b"%d" % key,
                value=b'{"user_id":%d,"ts":%d,"amount":1}' % (key, time.time_ns() // 1_000_000),
            )
            probes.flush(5)
            while not r.exists(prefix + str(key)):
                if time.perf_counter() - t0 > 10:
                    break
                time.sleep(0.0005)
            samples.append(time.perf_counter() - t0)
            time.sleep(0.05)
    finally:
        stop.set()
        background.join(60)
        proc.stop()
    samples.sort()
    return {"rate": rate, "probes": len(samples), "p50": samples[len(samples) // 2],
            "p99": samples[min(len(samples) - 1, int(len(samples) * 0.99))], "max": samples[-1]}  # fmt: skip


async def join_qps(redis: RedisServer, seconds: float) -> dict[str, Any]:
    import numpy as np
    import pyarrow as pa

    from featurestore.definitions.parser import parse_definitions
    from featurestore.definitions.snapshot import new_snapshot
    from featurestore.join import JoinEngine, JoinRequest, Limits
    from featurestore.plan import ServingState
    from featurestore.rows import view_schema
    from featurestore.sources.redis import RedisOptions, RedisSource
    from featurestore.streaming.redis_store import RedisTileStore
    from featurestore.streaming.serving import StreamSource
    from featurestore.streaming.store import PartitionMark, TileBatch
    from featurestore.streaming.tiles import TileAccumulator, view_layout

    project = f"j{uuid.uuid4().hex[:6]}"
    defs = parse_definitions(
        definitions(project, "j", ("count", "sum", "avg", "max", "last"), True), source="b"
    )
    stream_view, plain_view = defs.views["activity"], defs.views["plain"]
    tiles = RedisTileStore("default", project, redis.url)
    rng = np.random.default_rng(3)
    now_us = time.time_ns() // 1000
    acc = TileAccumulator(view_layout(stream_view))  # ~20 events per user over the last 2 hours
    for user, ts, amount in zip(rng.integers(0, USERS, 200_000).tolist(), (now_us - rng.integers(0, 7_200_000_000, 200_000)).tolist(),
                                rng.uniform(1, 100, 200_000).tolist(), strict=True):  # fmt: skip
        acc.add(str(user), ts, {"amount": amount})
    tiles.apply(
        stream_view, TileBatch("j", {0: (-1, PartitionMark(0, 0))}, acc.records, now_us // 60_000_000)
    )
    plain = RedisSource("default", project, RedisOptions(url=redis.url, pool_size=8))
    await plain.start()
    await plain.prepare([plain_view])
    schema = view_schema(plain_view)
    cols = {"user_id": pa.array(np.arange(USERS), pa.int64()),
            "event_timestamp": pa.array(np.full(USERS, now_us), pa.timestamp("us", tz="UTC"))}  # fmt: skip
    for f in plain_view.features:
        cols[f.name] = pa.array(rng.uniform(0, 100, USERS))
    await plain.write(plain_view, pa.table({f.name: cols[f.name] for f in schema}, schema=schema), 0)
    stream = StreamSource("default", tiles)
    await stream.prepare([stream_view])
    if not await stream.kernel_ready():  # as a server is seconds after its start
        raise SystemExit("the compiled windows pass did not load (see the log)")
    engine = JoinEngine(
        {"default": plain, stream.name: stream}, ServingState(new_snapshot(defs, 1)), Limits(max_rows=1000)
    )
    out: dict[str, Any] = {}
    rounds = 6  # interleaved short rounds, best of each: other tenants' load comes and goes
    for batch in (1, 100):
        rnd = random.Random(batch)
        best = {"activity": 0.0, "plain": 0.0}
        for _ in range(rounds):
            for view in ("plain", "activity"):
                features = tuple(f"{view}:{f.name}" for f in defs.views[view].features)
                n = 0
                t0 = time.perf_counter()
                end = t0 + seconds / rounds
                while time.perf_counter() < end:
                    keys = [rnd.randrange(USERS) for _ in range(batch)]
                    await engine.join(JoinRequest({"user_id": keys}, features), time.monotonic() + 1)
                    n += 1
                best[view] = max(best[view], n / (time.perf_counter() - t0))
        out.update({f"{view}_b{batch}": qps for view, qps in best.items()})
    await plain.close()
    await stream.close()
    return out


def render(
    a: dict[str, Any], b: dict[str, Any], c: dict[str, Any], command: str, source: str | None = None
) -> str:
    load = os.getloadavg()[0]
    lines = [
        "## Streaming (issue 12)",
        "",
        f"* Run: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; command: `{command}`",
        f"* Machine: {machine(source)}. Broker (Tansu), Redis, processor and load share the cores; load average "
        f"{load:.1f} at the end of the run (other tenants included: above 2, figures are CPU-starved).",
        "",
        "| target | goal | measured |",
        "|---|---|---|",
        f"| processor throughput, 4 aggregations x 3 windows, one process, {a['events']:,} events | >= 50,000 events/s | "
        f"{a['events_per_s']:,.0f} events/s ({a['seconds']:.2f} s; CPU: processor {a['cpu_processor_s']:.2f} s = "
        f"{a['events_per_processor_cpu_s']:,.0f} events per CPU-second, Redis {a['cpu_redis_s']:.2f} s, "
        f"broker {a['cpu_broker_s']:.2f} s) |",
        f"| event-to-servable latency at {b['rate']:,.0f} events/s ({b['probes']} probes) | p99 <= 1 s | "
        f"p50 {b['p50'] * 1000:.0f} ms, p99 {b['p99'] * 1000:.0f} ms, max {b['max'] * 1000:.0f} ms |",
    ]
    for batch in (1, 100):
        s, p = c[f"activity_b{batch}"], c[f"plain_b{batch}"]
        lines.append(
            f"| join QPS, stream view 5 aggs x 3 windows vs plain view of 15 features, batch {batch} (in process) | "
            f">= 0.5x | {s:,.0f} vs {p:,.0f} QPS ({s / p:.2f}x) |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=300_000)
    ap.add_argument("--rate", type=float, default=10_000.0)
    ap.add_argument("--latency-seconds", type=float, default=30.0)
    ap.add_argument("--join-seconds", type=float, default=5.0)
    ap.add_argument("--no-write", action="store_true", help="print only; leave benchmarks/results alone")
    args = ap.parse_args()
    source = source_state()  # before the processor child loads the code
    command = "python -m benchmarks.streaming" + "".join(
        f" --{k.replace('_', '-')} {v}"
        for k, v in vars(args).items()
        if k != "no_write" and v != ap.get_default(k)
    )
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        kafka = TansuBroker(log_path=work / "tansu.log").start()
        redis = RedisServer(work).start()
        try:
            a = throughput(kafka, redis, args.events)
            print(json.dumps(a))
            b = latency(kafka, redis, args.rate, args.latency_seconds, work)
            print(json.dumps(b))
            c = asyncio.run(join_qps(redis, args.join_seconds))
            print(json.dumps(c))
        finally:
            redis.stop()
            kafka.stop()
    text = render(a, b, c, command, source)
    print(text)
    if not args.no_write:
        RESULTS.write_text(text)
        stitch()


if __name__ == "__main__":
    main()
