"""The stream processor when things go wrong: through a Redis outage the lag keeps being
measured while the write waits for Redis (the lag alert sees it grow), and after Redis
comes back empty the processor re-reads the topic from the start, so every event is
counted exactly once; an event from a clock ahead does not make the next ones late."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY

from featurestore.definitions.parser import parse_definitions
from featurestore.model import FeatureView
from featurestore.streaming.processor import ProcessorOptions, StreamProcessor
from featurestore.streaming.redis_store import RedisTileStore
from featurestore.streaming.store import NO_MARK, MemoryTileStore
from featurestore.streaming.tiles import view_layout
from featurestore.streaming.windows import compute
from lineage.kafka import KafkaSettings, ensure_topic
from tests.servers import RedisServer, TansuBroker
from tests.support import wait_until


def count_view(name: str, topic: str, project: str = "p", **options: Any) -> FeatureView:
    """A stream view counting the events of ``topic`` (key ``u``, time ``ts``) over 1h."""
    doc = {
        "project": project,
        "entities": [{"name": "user_id", "dtype": "int64"}],
        "stream_views": [
            {
                "name": name,
                "entities": ["user_id"],
                **options,
                "source": {"topic": topic, "key_fields": ["u"], "timestamp_field": "ts"},
                "aggregations": [{"name": "n", "function": "count", "window": "1h"}],
            }
        ],
    }
    return parse_definitions(doc, source=f"{name}.yaml").views[name]


def topic_producer(kafka: TansuBroker, topic: str, **config: Any) -> Any:
    """A producer on ``topic``, created with one partition; ``config``: more producer
    settings (dotted names as keywords: ``**{"linger.ms": 10_000}``)."""
    from confluent_kafka import Producer
    from confluent_kafka.admin import AdminClient

    ensure_topic(AdminClient({"bootstrap.servers": kafka.bootstrap}), topic, 1, 1)
    return Producer({"bootstrap.servers": kafka.bootstrap, **config})


def run_until_applied(proc: StreamProcessor, store: Any, view: Any, topic: str, offset: int) -> None:
    """Run the processor on a thread until partition 0's mark reaches ``offset``, then stop it."""
    stop = threading.Event()
    thread = threading.Thread(target=proc.run, args=(stop,))
    thread.start()
    try:
        wait_until(lambda: store.marks(view, topic).get(0, NO_MARK).offset == offset, 60, "the topic applied")
    finally:
        stop.set()
        thread.join(30)


def test_the_lag_grows_while_redis_is_down_and_every_event_counts_once_after_it_returns(
    kafka: TansuBroker, tmp_path: Path
) -> None:

    topic = f"outage-{uuid.uuid4().hex[:8]}"
    view = count_view("outage_view", topic)
    producer = topic_producer(kafka, topic)
    now_ms = time.time_ns() // 1_000_000

    def produce(n: int) -> None:
        for _ in range(n):
            producer.produce(topic, key=b"1", value=json.dumps({"u": 1, "ts": now_ms}).encode())
        assert producer.flush(10) == 0

    def lag() -> float:
        return REGISTRY.get_sample_value("featurestore_stream_lag_messages", {"view": "outage_view"}) or 0.0

    redis = RedisServer(tmp_path / "r").start()
    store = RedisTileStore("default", "p", redis.url)
    settings = KafkaSettings(bootstrap_servers=kafka.bootstrap, session_timeout_ms=2000)
    options = ProcessorOptions(batch_messages=10, poll_seconds=0.05, lag_interval_seconds=0.1)
    proc = StreamProcessor(view, store, settings, "p", options)
    stop = threading.Event()
    thread = threading.Thread(target=proc.run, args=(stop,))
    produce(20)
    thread.start()
    try:
        # Offset 19 and lag 0 together: the lag gauge reads 0 before its first report, so
        # "a mark and lag 0" alone held after the first batch of 10 (offset 9) now and then.
        wait_until(
            lambda: getattr(store.marks(view, topic).get(0), "offset", None) == 19 and lag() == 0,
            60,
            "caught up",
        )
        redis.stop()
        produce(1)
        wait_until(lambda: proc.marks[0].offset == 20, 60, "a write of offset 20 waiting for Redis")
        produce(29)  # consumed by nobody while that write waits
        # the write in flight and the new messages (counted by the broker's high watermark,
        # which the test broker moves once per produced batch: at least 2 here)
        wait_until(lambda: lag() >= 2, 60, "the lag measured while the write waits")
        redis.start()  # same port, empty: no tiles, no marks
        wait_until(
            lambda: store.marks(view, topic).get(0) is not None and store.marks(view, topic)[0].offset == 49,
            60,
            "the topic re-applied from the start",
        )
        blobs = asyncio.run(read_once(store, view))
        assert compute(view_layout(view), blobs, now_ms * 1000 + 1, [0]).columns == [[50]]  # each event once
    finally:
        stop.set()
        thread.join(30)
        store.close()
        redis.stop()


async def read_once(store: RedisTileStore, view: FeatureView) -> list[bytes | None]:
    try:
        return await store.read(view, ["1"])
    finally:
        await store.aclose()


def test_an_event_half_an_hour_ahead_of_the_clock_does_not_make_the_next_ones_late(
    kafka: TansuBroker,
) -> None:
    """A producer whose clock (or time zone) is ahead, here by half an hour (within the
    view's longest window: further is malformed): its event is applied, but the
    partition's watermark stops a minute ahead of the processor's clock, so the
    correctly timed events after it are not dropped as late."""

    topic = f"skew-{uuid.uuid4().hex[:8]}"
    view = count_view("skew_view", topic, allowed_lateness="30s")
    now = time.time_ns() // 1_000_000
    producer = topic_producer(kafka, topic)
    for ts in (now + 1_800_000, now, now - 10_000, now - 600_000):  # the last one is late
        producer.produce(topic, key=b"1", value=json.dumps({"u": 1, "ts": ts}).encode())
    assert producer.flush(10) == 0
    store = MemoryTileStore()
    settings = KafkaSettings(bootstrap_servers=kafka.bootstrap, session_timeout_ms=2000)
    proc = StreamProcessor(view, store, settings, "p", ProcessorOptions(batch_messages=2, poll_seconds=0.05))

    def count(outcome: str) -> float:
        labels = {"view": "skew_view", "outcome": outcome}
        return REGISTRY.get_sample_value("featurestore_stream_events_total", labels) or 0.0

    run_until_applied(proc, store, view, topic, 3)
    assert (count("applied"), count("late")) == (3, 1)
    assert store.marks(view, topic)[0].watermark_us < (now + 120_000) * 1000
    got = compute(view_layout(view), asyncio.run(store.read(view, ["1"])), now * 1000, [0])
    assert got.columns == [[2]]  # the future event's tile is not in the window yet


@pytest.mark.parametrize("stamp", ["send time", "event time"])
def test_events_ahead_of_their_neighbours_in_a_backlog_older_than_the_lateness_do_not_make_it_late(
    kafka: TansuBroker, redis_server: RedisServer, stamp: str
) -> None:
    """A processor catching up (after a restart, a Redis outage) reads messages older than
    its clock: 150 events of the last 5 minutes, each produced at its time, read at once.
    One among them is half an hour ahead (a wrong time zone), one 3 minutes ahead of its
    neighbours, their Kafka timestamps the time they were sent (a client stamping send
    time) or their own event times (Kafka Streams, Flink). Both are applied; neither moves
    the watermark (past what the messages' times allow, and past their neighbours'), so no
    correctly timed event is late (at 30 s of lateness). Capped at the processor's clock,
    the first made the rest of the backlog late (review s55: 89 of 120)."""
    topic = f"backlog-{uuid.uuid4().hex[:8]}"
    project = f"p{uuid.uuid4().hex[:6]}"
    name = "backlog_view" if stamp == "send time" else "backlog_view_stamped"  # (counts are per view)
    view = count_view(name, topic, project=project, allowed_lateness="30s")
    now = time.time_ns() // 1_000_000
    producer = topic_producer(kafka, topic)

    def produce(ts: int, sent: int) -> None:  # ``sent``: the message's Kafka timestamp
        producer.produce(topic, key=b"1", value=json.dumps({"u": 1, "ts": ts}).encode(), timestamp=sent)

    for i in range(150):
        ts = now - 300_000 + i * 2_000
        for ahead, at in ((1_800_000, 10), (180_000, 40)):
            if i == at:
                produce(ts + ahead, ts if stamp == "send time" else ts + ahead)
        produce(ts, ts)
    produce(now - 600_000, now)  # really late: the watermark did move with the backlog
    assert producer.flush(10) == 0
    store = RedisTileStore("default", project, redis_server.url)
    settings = KafkaSettings(bootstrap_servers=kafka.bootstrap, session_timeout_ms=2000)
    proc = StreamProcessor(
        view, store, settings, project, ProcessorOptions(batch_messages=50, poll_seconds=0.05)
    )

    def count(outcome: str) -> float:
        labels = {"view": name, "outcome": outcome}
        return REGISTRY.get_sample_value("featurestore_stream_events_total", labels) or 0.0

    try:
        run_until_applied(proc, store, view, topic, 152)
        blobs = asyncio.run(read_once(store, view))
    finally:
        store.close()
    assert (count("applied"), count("late")) == (152, 1)
    # the 150, and the one 3 minutes ahead (its time has come); the other is still ahead
    assert compute(view_layout(view), blobs, (now + 1) * 1000, [0]).columns == [[151]]


def test_a_key_whose_event_is_in_a_future_tile_lives_until_that_tile_is_served(
    kafka: TansuBroker, redis_server: RedisServer
) -> None:
    """An event ahead of the clock (within 60 s + the longest window: applied in its future
    tile) on a key written no more: the key's tiles expire after the window + a tile +
    the lateness (3 s here), counted from the write, and so did the event before its time
    came (review s55). Its key is kept as many tiles longer as its newest tile is ahead,
    also through a later write of a current tile."""
    topic = f"future-{uuid.uuid4().hex[:8]}"
    project = f"p{uuid.uuid4().hex[:6]}"
    doc = {
        "project": project,
        "entities": [{"name": "user_id", "dtype": "int64"}],
        "stream_views": [
            {
                "name": "future_view",
                "entities": ["user_id"],
                "tile": "1s",
                "source": {"topic": topic, "key_fields": ["u"], "timestamp_field": "ts"},
                "aggregations": [{"name": "n_2s", "function": "count", "window": "2s"}],
            }
        ],
    }
    view = parse_definitions(doc, source="future.yaml").views["future_view"]
    producer = topic_producer(kafka, topic)

    def produce(user: int, ts: int) -> None:
        producer.produce(topic, key=b"1", value=json.dumps({"u": user, "ts": ts}).encode())
        assert producer.flush(10) == 0

    store = RedisTileStore("default", project, redis_server.url)
    settings = KafkaSettings(bootstrap_servers=kafka.bootstrap, session_timeout_ms=2000)
    proc = StreamProcessor(view, store, settings, project, ProcessorOptions(poll_seconds=0.05))
    stop = threading.Event()
    thread = threading.Thread(target=proc.run, args=(stop,))

    def applied(offset: int) -> None:
        wait_until(lambda: store.marks(view, topic).get(0, NO_MARK).offset == offset, 60, f"offset {offset}")

    produce(2, time.time_ns() // 1_000_000)
    thread.start()
    try:
        applied(0)  # the processor has its partition: what follows is written at once
        ahead = time.time_ns() // 1_000_000 + 5_000
        produce(1, ahead)
        applied(1)
        produce(1, time.time_ns() // 1_000_000)  # a current tile of the key, written after
        applied(2)
    finally:
        stop.set()
        thread.join(30)
    time.sleep(max(0.0, (ahead + 300) / 1000 - time.time()))  # the event's time has come
    try:
        blobs = asyncio.run(read_once(store, view))
    finally:
        store.close()
    assert blobs != [None], "the key expired before its event's tile was served"
    assert compute(view_layout(view), blobs, time.time_ns() // 1000, [0]).columns == [[1]]


def test_a_malformed_message_too_large_for_the_dead_letter_topic_is_dead_lettered_without_its_value(
    kafka: TansuBroker,
) -> None:
    """Near Kafka's size limit, the message plus the dead-letter headers no longer fits:
    the producer refuses it at once. That must not stop the processor (the message would
    be redelivered to every restart): its reason and origin go to the dead-letter topic."""
    from confluent_kafka import Consumer, TopicPartition

    topic = f"huge-{uuid.uuid4().hex[:8]}"
    view = count_view("huge_view", topic)
    producer = topic_producer(kafka, topic)
    producer.produce(topic, key=b"1", value=b"x" * 999_900)  # fits alone; not JSON
    producer.produce(topic, key=b"1", value=json.dumps({"u": 1, "ts": time.time_ns() // 1_000_000}).encode())
    assert producer.flush(10) == 0
    store = MemoryTileStore()
    settings = KafkaSettings(bootstrap_servers=kafka.bootstrap, session_timeout_ms=2000)
    proc = StreamProcessor(view, store, settings, "p", ProcessorOptions(poll_seconds=0.05))
    run_until_applied(proc, store, view, topic, 1)
    consumer = Consumer({"bootstrap.servers": kafka.bootstrap, "group.id": f"t-{uuid.uuid4().hex[:8]}"})
    consumer.assign([TopicPartition(f"{topic}.dlq", 0, 0)])
    got: list[Any] = []

    def letters() -> bool:
        got.extend(consumer.consume(10, 0.2))
        return bool(got)

    try:
        wait_until(letters, 30, "the dead letter")
    finally:
        consumer.close()
    [letter] = got
    headers = dict(letter.headers())
    assert letter.value() is None and headers["featurestore-source"] == f"{topic}:0:0".encode()
    assert (
        b"not valid JSON" in headers["featurestore-error"]
        and b"999901 bytes left out" in headers["featurestore-error"]
    )


def test_a_processor_started_before_the_server_applied_the_definitions_waits_for_them(
    kafka: TansuBroker, tmp_path: Path
) -> None:
    """The walk-through starts `serve` and `stream run` together; the processor may read
    the registry before the server has applied the definitions to it."""
    import subprocess
    import sys

    from tests.support import ROOT, StreamProcessorProcess

    config = tmp_path / "config.yaml"
    config.write_text(
        f"project: streamdemo\nregistry: {{path: {tmp_path / 'registry'}}}\n"
        "stores: {default: {kind: redis, url: 'redis://127.0.0.1:1/0', cache: false}}\n"
        f"derived: {{cache_dir: {tmp_path / 'kernels'}}}\n"  # not ~/.cache: another pytest process's
        f"stream: {{kafka: {{bootstrap_servers: '{kafka.bootstrap}'}}}}\n"
    )
    demo = ROOT / "featurestore" / "demo" / "stream_features.yaml"

    def apply_later() -> None:
        time.sleep(1)  # the processor is started (not a timed assert: it waits up to 30 s)
        subprocess.run(
            [sys.executable, "-m", "featurestore.cli", "apply", str(demo), "--config", str(config)],
            cwd=ROOT, check=True, capture_output=True, timeout=60,
        )  # fmt: skip

    applier = threading.Thread(target=apply_later)
    applier.start()
    processor = StreamProcessorProcess(["--config", str(config), "--view", "user_clicks"], tmp_path / "s.log")
    try:
        processor.start()  # raises when the process exits ("the registry has no snapshot")
        assert "featurestore_stream_processor_up" in processor.metrics()
    finally:
        applier.join(60)
        processor.stop()


def test_after_the_tile_store_lost_everything_a_restarted_processor_rebuilds_from_the_topics_start(
    kafka: TansuBroker, redis_server: RedisServer
) -> None:
    """The stored marks are what count, not Kafka's committed offsets: with no mark (Redis
    flushed) a processor of the same group reads the topic again from its start."""
    import redis as redis_client

    topic = f"flushed-{uuid.uuid4().hex[:8]}"
    view = count_view("flushed_view", topic, project=f"p{uuid.uuid4().hex[:6]}")
    producer = topic_producer(kafka, topic)
    now_ms = time.time_ns() // 1_000_000

    def produce(n: int) -> None:
        for _ in range(n):
            producer.produce(topic, key=b"1", value=json.dumps({"u": 1, "ts": now_ms}).encode())
        assert producer.flush(10) == 0

    store = RedisTileStore("default", "p", redis_server.url)
    settings = KafkaSettings(bootstrap_servers=kafka.bootstrap, session_timeout_ms=2000)
    options = ProcessorOptions(batch_messages=10, poll_seconds=0.05, group_id=f"g-{topic}")

    def run_until(offset: int) -> None:
        proc = StreamProcessor(view, store, settings, "p", options)
        stop = threading.Event()
        thread = threading.Thread(target=proc.run, args=(stop,))
        thread.start()
        try:
            wait_until(
                lambda: store.marks(view, topic).get(0, NO_MARK).offset == offset, 60, f"offset {offset}"
            )
        finally:
            stop.set()
            thread.join(30)

    produce(20)
    run_until(19)  # applied, and committed to Kafka when it left the group
    redis_client.Redis.from_url(redis_server.url).flushall()
    produce(5)
    run_until(24)
    try:
        blobs = asyncio.run(read_once(store, view))
    finally:
        store.close()
    assert compute(view_layout(view), blobs, now_ms * 1000 + 1, [0]).columns == [[25]]


async def test_a_tile_read_on_sockets_redis_closed_while_idle_is_answered_from_fresh_ones(
    redis_server: RedisServer,
) -> None:
    """As the Redis store's reads (test_redis_source.py): a pooled socket the server closed
    while it idled fails its first use; the read is tried once more on fresh sockets."""
    name = f"tiles{uuid.uuid4().hex[:8]}"
    store = RedisTileStore("default", "p", f"{redis_server.url}?client_name={name}", pool_size=2)
    view = count_view("idle_tiles", "t")
    try:
        assert await store.read(view, ["1", "2"]) == [None, None]  # the pool's connection, now idle
        assert redis_server.kill_clients(name, "mget") >= 1
        counted = {"store": "default"}
        before = REGISTRY.get_sample_value("featurestore_source_read_retries_total", counted) or 0.0
        assert await store.read(view, ["1", "2"]) == [None, None]
        assert REGISTRY.get_sample_value("featurestore_source_read_retries_total", counted) == before + 1
    finally:
        await store.aclose()
