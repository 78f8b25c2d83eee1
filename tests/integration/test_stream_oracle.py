"""The correctness oracle of stream views (issue 12, requirement 6).

A generated event log (several keys, out of order within the allowed lateness, some
late, some malformed, some filtered out) goes through the real Kafka-protocol broker and
a processor child process killed with SIGKILL mid-stream and restarted into a real
Redis; the whole log is then redelivered to a processor of the same group. Every
window value the join serves, at several read times, equals a plain recomputation from
the log (tests/unit/stream_reference.py), floats within 1e-9 relative; the malformed
events are in the dead-letter topic with their reason.
"""

from __future__ import annotations

import json
import random
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from featurestore.definitions.parser import load_definitions
from featurestore.definitions.snapshot import new_snapshot
from featurestore.join import JoinEngine, JoinRequest, Limits
from featurestore.model import FeatureView, Status
from featurestore.plan import ServingState
from featurestore.streaming.processor import ProcessorOptions, StreamProcessor
from featurestore.streaming.redis_store import RedisTileStore
from featurestore.streaming.serving import StreamSource
from lineage.kafka import KafkaSettings, ensure_topic
from tests.servers import RedisServer, TansuBroker
from tests.support import StreamProcessorProcess, wait_until
from tests.unit.stream_reference import close, replay, window_values

TILE_US = 60_000_000
LATENESS_US = 120_000_000
AGGS = [
    ("clicks_5m", "count", "", 5),
    ("clicks_1h", "count", "", 60),
    ("spend_5m", "sum", "amount", 5),
    ("spend_15m", "sum", "amount", 15),
    ("avg_15m", "avg", "amount", 15),
    ("min_1h", "min", "amount", 60),
    ("max_15m", "max", "amount", 15),
    ("last_1h", "last", "amount", 60),
]
USERS = list(range(1, 9))
NEVER_SEEN = 99


def definitions(path: Path, project: str, topic: str) -> Path:
    aggs = "".join(
        f"      - {{name: {n}, function: {f}, {'column: ' + c + ', ' if c else ''}window: {w}m}}\n"
        for n, f, c, w in AGGS
    )
    path.write_text(
        f"project: {project}\n"
        "entities: [{name: user_id, dtype: int64}]\n"
        "stream_views:\n"
        "  - name: activity\n"
        "    entities: [user_id]\n"
        "    tile: 1m\n"
        "    allowed_lateness: 2m\n"
        f"    source: {{topic: {topic}, key_fields: [user], timestamp_field: ts, filter: {{kind: click}}}}\n"
        "    aggregations:\n" + aggs
    )
    return path


def generate(n: int, end_ms: int, seed: int = 12) -> list[tuple[int, bytes]]:
    """(user, message value): 40 minutes of clicks, jittered within the lateness, ~4% far
    behind (late unless their partition's watermark is still low), ~4% malformed, ~10%
    of another kind (filtered), ~8% without an amount."""
    rng = random.Random(seed)
    start = end_ms - 40 * 60_000
    out: list[tuple[int, bytes]] = []
    for i in range(n):
        user = rng.choice(USERS)
        ts = start + (end_ms - start) * i // n - rng.randint(0, 100_000)
        r = rng.random()
        if r < 0.04:
            ts -= rng.randint(180_000, 600_000)
        event: dict[str, Any] = {
            "user": user,
            "ts": ts,
            "kind": "click",
            "amount": round(rng.uniform(0.5, 200), 3),
        }
        r = rng.random()
        if r < 0.10:
            event["kind"] = "view"
        elif r < 0.18:
            del event["amount"]
        raw = json.dumps(event).encode()
        r = rng.random()
        if r < 0.01:
            raw = b'{"user": 3, "ts": '  # not JSON
        elif r < 0.02:
            raw = json.dumps({"ts": ts, "kind": "click", "amount": 1.0}).encode()  # no key
        elif r < 0.03:
            raw = json.dumps({"user": user, "ts": ts, "kind": "click", "amount": "12"}).encode()  # wrong type
        elif r < 0.04:
            raw = json.dumps({"user": user, "kind": "click"}).encode()  # no timestamp
        out.append((user, raw))
    return out


def produce(kafka: TansuBroker, topic: str, events: list[tuple[int, bytes]]) -> list[tuple[int, int, bytes]]:
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": kafka.bootstrap, "enable.idempotence": True, "linger.ms": 5})
    delivered: list[tuple[int, int, bytes]] = []

    def report(err: Any, msg: Any) -> None:
        assert err is None, err
        delivered.append((msg.partition(), msg.offset(), msg.value()))

    for user, raw in events:
        producer.produce(topic, key=str(user).encode(), value=raw, on_delivery=report)
        producer.poll(0)
    assert producer.flush(20) == 0
    return delivered


def stored_offsets(store: RedisTileStore, view: FeatureView, topic: str) -> dict[int, int]:
    return {p: m.offset for p, m in store.marks(view, topic).items()}


def last_offsets(log: list[tuple[int, int, bytes]]) -> dict[int, int]:
    out: dict[int, int] = {}
    for p, o, _ in log:
        out[p] = max(out.get(p, -1), o)
    return out


async def served(store: RedisTileStore, defs: Any, now_us: int) -> Any:
    source = StreamSource("default", store, clock=lambda: now_us)
    engine = JoinEngine({source.name: source}, ServingState(new_snapshot(defs, 1)), Limits())
    keys = [*USERS, NEVER_SEEN, USERS[0]]  # a repeated key too
    features = tuple(f"activity:{n}" for n, *_ in AGGS)
    result = await engine.join(JoinRequest({"user_id": keys}, features), time.monotonic() + 10)
    return keys, {c.name: c for c in result.columns}


async def test_served_windows_equal_a_recomputation_from_the_log_through_a_crash_and_a_redelivery(
    kafka: TansuBroker, redis_server: RedisServer, tmp_path: Path
) -> None:
    topic = f"clicks-{uuid.uuid4().hex[:8]}"
    project = f"s{uuid.uuid4().hex[:8]}"
    from confluent_kafka.admin import AdminClient

    ensure_topic(AdminClient({"bootstrap.servers": kafka.bootstrap}), topic, 3, 1)
    defs_path = definitions(tmp_path / "features.yaml", project, topic)
    defs = load_definitions(defs_path)
    view = defs.views["activity"]
    config = tmp_path / "config.yaml"
    config.write_text(
        f"project: {project}\n"
        f"stores: {{default: {{kind: redis, url: '{redis_server.url}'}}}}\n"
        "stream:\n  batch_messages: 40\n  poll_seconds: 0.02\n  lag_interval_seconds: 0.2\n"
        f"  kafka: {{bootstrap_servers: '{kafka.bootstrap}', session_timeout_ms: 2000}}\n"
    )
    store = RedisTileStore("default", project, redis_server.url)
    end_ms = (time.time_ns() // 1_000_000 // 60_000) * 60_000 + 30_000  # mid-tile
    events = generate(2400, end_ms)
    args = ["--config", str(config), "--definitions", str(defs_path), "--view", "activity"]

    # 1. the first part, a processor killed with SIGKILL once it has written some of it
    log = produce(kafka, topic, events[:1500])
    first = StreamProcessorProcess(args, log_path=tmp_path / "first.log").start()
    wait_until(lambda: sum(o + 1 for o in stored_offsets(store, view, topic).values()) >= 200, 60, "progress")
    first.kill()
    # 2. the rest, and a second processor that picks up from what the first stored
    log += produce(kafka, topic, events[1500:])
    second = StreamProcessorProcess(args, log_path=tmp_path / "second.log").start()
    try:
        wait_until(
            lambda: stored_offsets(store, view, topic) == last_offsets(log), 90, "the whole log applied"
        )
        metrics = second.metrics()
    finally:
        second.stop()
    reference = replay(log, LATENESS_US)
    assert reference.late > 0 and reference.malformed > 0 and reference.filtered > 0  # the log exercises them

    # 3. a forced redelivery: the whole topic again, to a processor of the same group
    duplicates = redeliver(kafka, store, view, len(log))
    assert duplicates == len(log)

    # 4. every served value, at read times before, at and after the log's end
    for offset_min in (-25, -12, -7, 0, 3, 14, 50, 75):
        now_us = end_ms * 1000 + offset_min * 60_000_000 + 17_000_000
        keys, cols = await served(store, defs, now_us)
        for row, key in enumerate(keys):
            found, newest, expected = window_values(reference.accepted, key, now_us, TILE_US, AGGS)
            for name, *_ in AGGS:
                col = cols[name]
                status = col.outcome.statuses[row]
                where = f"{name} of user {key} at end{offset_min:+d}m"
                if not found:
                    assert status is Status.NOT_FOUND and col.values[row] is None, where
                    continue
                assert status is Status.PRESENT, where
                assert col.outcome.event_ts_us[row] == newest, where
                assert close(col.values[row], expected[name]), (
                    f"{where}: {col.values[row]} != {expected[name]}"
                )
    assert "featurestore_stream_processor_up" in metrics
    assert_dead_letters(kafka, topic, reference.malformed)


def redeliver(kafka: TansuBroker, store: RedisTileStore, view: FeatureView, n: int) -> int:
    """Run a processor whose consumer is rewound to the topic's start: every event comes
    again. Returns how many it skipped as already applied."""
    from confluent_kafka import OFFSET_BEGINNING, TopicPartition

    settings = KafkaSettings(bootstrap_servers=kafka.bootstrap, session_timeout_ms=2000)
    proc = StreamProcessor(
        view, store, settings, "oracle", ProcessorOptions(batch_messages=200, poll_seconds=0.05)
    )
    proc._connect()
    stop = threading.Event()
    seen = {"duplicate": 0, "rewound": False}
    original = proc._aggregate

    def counting(messages: list[Any], acc: Any) -> Any:
        turn = original(messages, acc)
        seen["duplicate"] += turn.counts["duplicate"]
        return turn

    proc._aggregate = counting  # type: ignore[method-assign]
    try:

        def all_again() -> bool:
            proc.turn(stop)
            if proc.marks and not seen["rewound"]:
                for p in proc.marks:
                    proc._consumer.seek(TopicPartition(view.stream.source.topic, p, OFFSET_BEGINNING))  # type: ignore[union-attr]
                seen["rewound"] = True
            return seen["duplicate"] >= n

        wait_until(all_again, 60, "the redelivered log", interval=0)
    finally:
        proc._finish(stop)
        proc._writer.shutdown()
        proc.close()
    return int(seen["duplicate"])


def assert_dead_letters(kafka: TansuBroker, topic: str, n: int) -> None:
    from confluent_kafka import Consumer

    dlq = Consumer({"bootstrap.servers": kafka.bootstrap, "group.id": f"d-{uuid.uuid4().hex[:6]}",
                    "auto.offset.reset": "earliest", "session.timeout.ms": 2000})  # fmt: skip
    dlq.subscribe([f"{topic}.dlq"])
    got: list[Any] = []
    deadline = time.monotonic() + 30
    while len(got) < n and time.monotonic() < deadline:
        m = dlq.poll(0.5)
        if m is not None and not m.error():
            got.append(m)
    dlq.close()
    # at least once: a batch dead-lettered just before the SIGKILL may be sent again
    assert len(got) >= n
    reasons = {dict(m.headers())["featurestore-error"].decode().split(":")[0] for m in got}
    assert {
        "not valid JSON",
        "Object missing required field `user`",
        "Expected `int | float | null`, got `str` - at `$.amount`",
        "Object missing required field `ts`",
    } <= reasons
