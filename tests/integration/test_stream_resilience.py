"""The stream processor against hostile events and failing neighbours, with a real
Kafka-protocol broker and a real Redis: an event no decoder expected is dead-lettered,
never the end of the processor (it would meet the same event on every restart)."""

from __future__ import annotations

import asyncio
import gc
import json
import struct
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml
from prometheus_client import REGISTRY

from featurestore.definitions.parser import parse_definitions
from featurestore.model import FeatureView
from featurestore.streaming.processor import ProcessorOptions, StreamProcessor
from featurestore.streaming.redis_store import RedisTileStore
from featurestore.streaming.store import NO_MARK, MemoryTileStore, TileBatch
from featurestore.streaming.tiles import TileAccumulator, view_layout
from featurestore.streaming.windows import compute
from lineage.kafka import KafkaSettings
from tests.integration.test_lineage_sink_close import librdkafka_threads
from tests.integration.test_stream_faults import count_view, topic_producer
from tests.servers import RedisServer, TansuBroker
from tests.support import ROOT, free_port, wait_until


def sku_view(name: str, topic: str) -> FeatureView:
    """Counts events per string key ``sku`` over 1h; keeps events of kind ``c`` only."""
    doc = {
        "project": f"p{uuid.uuid4().hex[:6]}",
        "entities": [{"name": "sku", "dtype": "string"}],
        "stream_views": [
            {
                "name": name,
                "entities": ["sku"],
                "source": {"topic": topic, "timestamp_field": "ts", "filter": {"kind": "c"}},
                "aggregations": [{"name": "n", "function": "count", "window": "1h"}],
            }
        ],
    }
    return parse_definitions(doc, source=f"{name}.yaml").views[name]


def counted(view: str, outcome: str) -> float:
    labels = {"view": view, "outcome": outcome}
    return REGISTRY.get_sample_value("featurestore_stream_events_total", labels) or 0.0


@contextmanager
def running(proc: StreamProcessor) -> Iterator[Callable[[], None]]:
    """The processor on a thread; yields a check that raises what ended it, if anything."""
    failure: list[BaseException] = []

    def run() -> None:
        try:
            proc.run(stop)
        except BaseException as e:
            failure.append(e)

    def alive() -> None:
        if failure:
            raise AssertionError(f"the processor stopped: {failure[0]!r}") from failure[0]

    stop = threading.Event()
    thread = threading.Thread(target=run)
    thread.start()
    try:
        yield alive
    finally:
        stop.set()
        thread.join(30)


def run_until_marked(
    proc: StreamProcessor, store: Any, view: Any, topic: str, offset: int, what: str
) -> None:
    """Run ``proc`` (``running``) until partition 0's mark reaches ``offset``; fail if it stops first."""
    with running(proc) as alive:

        def applied() -> bool:
            alive()
            return bool(store.marks(view, topic).get(0, NO_MARK).offset == offset)

        wait_until(applied, 60, what)
        alive()


def dead_letters(kafka: TansuBroker, topic: str, n: int) -> list[Any]:
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": kafka.bootstrap, "group.id": f"t-{uuid.uuid4().hex[:8]}"})
    consumer.assign([TopicPartition(topic, 0, 0)])
    got: list[Any] = []

    def enough() -> bool:
        got.extend(m for m in consumer.consume(10, 0.2) if m.error() is None)
        return len(got) >= n

    try:
        wait_until(enough, 30, f"{n} dead letters in {topic}")
    finally:
        consumer.close()
    return got


def test_invalid_utf8_in_a_kept_string_or_json_nested_too_deep_is_dead_lettered_and_the_batch_applied(
    kafka: TansuBroker, redis_server: RedisServer
) -> None:
    """msgspec raises UnicodeDecodeError for invalid UTF-8 in a string it keeps (the key,
    an ISO timestamp, a filter field) and RecursionError for JSON nested ~1000 deep,
    even in a field the view ignores: each is malformed, like invalid JSON."""
    topic = f"hostile-{uuid.uuid4().hex[:8]}"
    view = sku_view("hostile_view", topic)
    now = time.time_ns() // 1_000_000
    deep = b"[" * 2000 + b"]" * 2000
    values = [
        b'{"sku": "a", "ts": %d, "kind": "c"}' % now,
        b'{"sku": "caf\xe9", "ts": %d, "kind": "c"}' % now,  # the key
        b'{"sku": "a", "ts": "2026-12-03T10:00:00\xe9", "kind": "c"}',  # an ISO timestamp
        b'{"sku": "a", "ts": %d, "kind": "cl\xe9ck"}' % now,  # the filter field
        b'{"sku": "a", "ts": %d, "kind": "c", "ignored": %s}' % (now, deep),
        b'{"sku": "a", "ts": %d, "kind": "c"}' % now,
    ]
    producer = topic_producer(kafka, topic)
    for v in values:
        producer.produce(topic, key=b"a", value=v)
    assert producer.flush(10) == 0
    store = RedisTileStore("default", "p", redis_server.url)
    settings = KafkaSettings(bootstrap_servers=kafka.bootstrap, session_timeout_ms=2000)
    proc = StreamProcessor(view, store, settings, "p", ProcessorOptions(poll_seconds=0.05))
    try:
        with running(proc) as alive:

            def applied() -> bool:
                alive()
                return store.marks(view, topic).get(0, NO_MARK).offset == len(values) - 1

            wait_until(applied, 60, "every event applied or dead-lettered")
        blobs = asyncio.run(read_once(store, view, ["a"]))
    finally:
        store.close()
    assert compute(view_layout(view), blobs, now * 1000 + 1, [0]).columns == [[2]]
    assert (counted("hostile_view", "applied"), counted("hostile_view", "dead_lettered")) == (2, 4)
    letters = dead_letters(kafka, f"{topic}.dlq", 4)
    reasons = [dict(m.headers())["featurestore-error"].decode() for m in letters]
    assert sum("not valid UTF-8" in r for r in reasons) == 3
    assert sum("nested too deeply" in r for r in reasons) == 1


def test_a_dead_letter_keeps_its_original_timestamp_and_none_of_the_messages_headers(
    kafka: TansuBroker, redis_server: RedisServer
) -> None:
    """docs/streaming.md: a malformed message's dead letter keeps its time, which a header
    of ours holds: the letter's own Kafka timestamp is when it was sent, as the topic's
    retention counts from it (a letter of an event older than the retention kept its time
    and was deleted minutes after its delivery). The message's own headers (and ours of a
    letter produced again) are not copied: confluent-kafka's headers() can crash the
    processor on a key that is not UTF-8 (review s55)."""
    topic = f"keeps-{uuid.uuid4().hex[:8]}"
    view = sku_view("keeps_view", topic)
    sent_ms = time.time_ns() // 1_000_000 - 30 * 86_400_000  # 30 days ago: beyond a 7-day retention
    producer = topic_producer(kafka, topic)
    own = [("trace-id", b"4bf92f35"), ("content-type", b"application/json")]
    producer.produce(topic, key=b"a", value=b"not json", headers=own, timestamp=sent_ms)
    again = [
        *own,
        ("featurestore-error", b"an earlier reason"),
        ("featurestore-view", b"old_view"),
        ("featurestore-original-timestamp", b"1 CreateTime"),
    ]
    producer.produce(topic, key=b"a", value=b'{"sku": 1}', headers=again, timestamp=sent_ms + 1)
    assert producer.flush(10) == 0
    store = RedisTileStore("default", "p", redis_server.url)
    settings = KafkaSettings(bootstrap_servers=kafka.bootstrap, session_timeout_ms=2000)
    started_ms = time.time_ns() // 1_000_000
    try:
        proc = StreamProcessor(view, store, settings, "p", ProcessorOptions(poll_seconds=0.05))
        run_until_marked(proc, store, view, topic, 1, "both dead-lettered")
    finally:
        store.close()
    first, second = dead_letters(kafka, f"{topic}.dlq", 2)
    ours = [
        "featurestore-error",
        "featurestore-view",
        "featurestore-source",
        "featurestore-original-timestamp",
    ]
    assert [k for k, _ in first.headers()] == [k for k, _ in second.headers()] == ours
    originals = [dict(letter.headers())["featurestore-original-timestamp"] for letter in (first, second)]
    assert originals == [f"{sent_ms} CreateTime".encode(), f"{sent_ms + 1} CreateTime".encode()]
    done_ms = time.time_ns() // 1_000_000
    for letter in (first, second):  # sent with the time it was sent
        assert started_ms <= letter.timestamp()[1] <= done_ms, (letter.timestamp(), started_ms, done_ms)
    assert (first.value(), first.key()) == (b"not json", b"a")
    reason = dict(second.headers())["featurestore-error"]
    assert (
        reason.startswith(b"Expected `str`, got `int`")
        and dict(second.headers())["featurestore-view"] == b"keeps_view"
    )


def test_a_stopped_processor_ends_its_kafka_clients_while_it_is_still_referenced(
    kafka: TansuBroker, redis_server: RedisServer
) -> None:
    """Its consumer and its dead-letter producer: a producer left to the garbage
    collector keeps reconnecting to a broker that stopped meanwhile."""
    topic = f"closing-{uuid.uuid4().hex[:8]}"
    view = sku_view("closing_view", topic)
    producer = topic_producer(kafka, topic)
    producer.produce(topic, key=b"a", value=b"not json")  # one dead letter: the producer is used
    assert producer.flush(10) == 0
    del producer
    gc.collect()  # clients other tests left to the collector end now, not during this test
    store = RedisTileStore("default", "p", redis_server.url)
    settings = KafkaSettings(bootstrap_servers=kafka.bootstrap, session_timeout_ms=2000)
    proc = StreamProcessor(view, store, settings, "p", ProcessorOptions(poll_seconds=0.05))
    # Its clients' threads: those started while it connects (a window of milliseconds, so a
    # thread another live client starts is not taken for one of them).
    its_own: set[str] = set()
    connect = proc._connect

    def connecting() -> None:
        before = librdkafka_threads()
        connect()
        its_own.update(librdkafka_threads() - before)

    proc._connect = connecting  # type: ignore[method-assign]
    try:
        with running(proc) as alive:

            def applied() -> bool:
                alive()
                return store.marks(view, topic).get(0, NO_MARK).offset == 0

            wait_until(applied, 60, "the malformed event dead-lettered")
            assert its_own & librdkafka_threads()  # running (librdkafka ends some of them itself)
        # proc is still referenced: only run()'s end can have ended them
        wait_until(lambda: not its_own & librdkafka_threads(), 10, "the processor's client threads to end")
        assert counted("closing_view", "dead_lettered") == 1
    finally:
        store.close()


async def read_once(store: RedisTileStore, view: FeatureView, keys: list[str]) -> list[bytes | None]:
    try:
        return await store.read(view, keys)
    finally:
        await store.aclose()


def retries(view: str) -> float:
    return REGISTRY.get_sample_value("featurestore_stream_store_retries_total", {"view": view}) or 0.0


def produce_events(kafka: TansuBroker, topic: str, n: int, ts_ms: int) -> None:
    producer = topic_producer(kafka, topic)
    for _ in range(n):
        producer.produce(topic, key=b"1", value=json.dumps({"u": 1, "ts": ts_ms}).encode())
    assert producer.flush(10) == 0


def count_of_key_1(store: RedisTileStore, view: FeatureView, now_ms: int) -> Any:
    blobs = asyncio.run(read_once(store, view, ["1"]))
    return compute(view_layout(view), blobs, now_ms * 1000 + 1, [0]).columns[0][0]


def test_a_write_redis_holds_past_the_socket_timeout_is_retried_and_every_event_counts_once(
    kafka: TansuBroker, tmp_path: Path
) -> None:
    """CLIENT PAUSE WRITE holds the batch's script past the client's socket timeout: the
    processor waits it out (redis-py's TimeoutError is not the builtin one) instead of
    dying; whether the timed-out attempt ran or not, each event counts once."""
    topic = f"paused-{uuid.uuid4().hex[:8]}"
    view = count_view("paused_view", topic, project=f"p{uuid.uuid4().hex[:6]}")
    now_ms = time.time_ns() // 1_000_000
    redis = RedisServer(tmp_path / "r").start()
    store = RedisTileStore("default", "p", f"{redis.url}?socket_timeout=0.5")
    settings = KafkaSettings(bootstrap_servers=kafka.bootstrap, session_timeout_ms=2000)
    proc = StreamProcessor(view, store, settings, "p", ProcessorOptions(batch_messages=10, poll_seconds=0.05))
    try:
        produce_events(kafka, topic, 10, now_ms)
        with running(proc) as alive:

            def at(offset: int) -> Callable[[], bool]:
                def check() -> bool:
                    alive()
                    return store.marks(view, topic).get(0, NO_MARK).offset == offset

                return check

            wait_until(at(9), 60, "the first batch")
            before = retries("paused_view")
            redis.cli("CLIENT", "PAUSE", "3000", "WRITE")
            produce_events(kafka, topic, 10, now_ms)
            wait_until(
                lambda: alive() or retries("paused_view") > before, 30, "a write timed out and retried"
            )
            wait_until(at(19), 60, "the second batch, after the pause")
        assert count_of_key_1(store, view, now_ms) == 20
        assert counted("paused_view", "applied") == 20
    finally:
        store.close()
        redis.stop()


def test_a_write_to_a_read_only_replica_is_retried_until_it_is_a_primary_again(
    kafka: TansuBroker, tmp_path: Path
) -> None:
    """A failover leaves the processor's Redis a replica (READONLY) for a while: it waits,
    reconnecting, instead of dying."""
    topic = f"replica-{uuid.uuid4().hex[:8]}"
    view = count_view("replica_view", topic, project=f"p{uuid.uuid4().hex[:6]}")
    now_ms = time.time_ns() // 1_000_000
    redis = RedisServer(tmp_path / "r").start()
    redis.cli("REPLICAOF", "127.0.0.1", str(free_port()))  # a primary nobody runs: read-only now
    store = RedisTileStore("default", "p", redis.url)
    settings = KafkaSettings(bootstrap_servers=kafka.bootstrap, session_timeout_ms=2000)
    proc = StreamProcessor(view, store, settings, "p", ProcessorOptions(poll_seconds=0.05))
    try:
        produce_events(kafka, topic, 5, now_ms)
        with running(proc) as alive:
            wait_until(lambda: alive() or retries("replica_view") >= 2, 30, "writes refused as read-only")
            assert redis.cli("REPLICAOF", "NO", "ONE") == "OK"

            def applied() -> bool:
                alive()
                return store.marks(view, topic).get(0, NO_MARK).offset == 4

            wait_until(applied, 60, "the batch written once the server is a primary")
        assert count_of_key_1(store, view, now_ms) == 5
    finally:
        store.close()
        redis.stop()


def test_stream_run_exits_non_zero_when_a_processor_fails(
    kafka: TansuBroker, redis_server: RedisServer, tmp_path: Path
) -> None:
    """A supervisor restarts a process that failed; an exit status of 0 reads as a stop."""
    import redis as redis_client

    topic = f"fails-{uuid.uuid4().hex[:8]}"
    project = f"p{uuid.uuid4().hex[:6]}"
    definitions = tmp_path / "defs.yaml"
    definitions.write_text(
        f"project: {project}\n"
        "entities: [{name: user_id, dtype: int64}]\n"
        "stream_views:\n"
        "  - name: failing_view\n"
        "    entities: [user_id]\n"
        f"    source: {{topic: {topic}, key_fields: [u], timestamp_field: ts}}\n"
        "    aggregations: [{name: n, function: count, window: 1h}]\n"
    )
    view = parse_definitions(yaml.safe_load(definitions.read_text()), source="defs.yaml").views[
        "failing_view"
    ]
    # the marks hash's key holds a string: reading the marks fails (WRONGTYPE), for good
    redis_client.Redis.from_url(redis_server.url).set(f"fs:{project}:failing_view:t{view.layout}:marks", "x")
    produce_events(kafka, topic, 1, time.time_ns() // 1_000_000)
    config = tmp_path / "config.yaml"
    config.write_text(
        f"project: {project}\n"
        f"stores: {{default: {{kind: redis, url: '{redis_server.url}', cache: false}}}}\n"
        f"stream: {{kafka: {{bootstrap_servers: '{kafka.bootstrap}', session_timeout_ms: 2000}}}}\n"
    )
    done = subprocess.run(
        [sys.executable, "-m", "featurestore.cli", "stream", "run", "--config", str(config),
         "--definitions", str(definitions), "--view", "failing_view", "--metrics-port", "0"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr[-2000:]
    assert "WRONGTYPE" in done.stderr and "stream processor failed: failing_view" in done.stderr


def test_stream_run_stopped_while_redis_is_down_exits_zero_with_a_warning_not_as_a_failure(
    kafka: TansuBroker, tmp_path: Path
) -> None:
    """The marks read waits out the refused Redis; SIGTERM ends the wait by raising the
    last connection error, which used to fail the processor (exit 1, its lineage run
    FAIL). A stop is a stop."""
    import signal

    topic = f"stopped-{uuid.uuid4().hex[:8]}"
    project = f"p{uuid.uuid4().hex[:6]}"
    definitions = tmp_path / "defs.yaml"
    definitions.write_text(
        f"project: {project}\n"
        "entities: [{name: user_id, dtype: int64}]\n"
        "stream_views:\n"
        "  - name: stopped_view\n"
        "    entities: [user_id]\n"
        f"    source: {{topic: {topic}, key_fields: [u], timestamp_field: ts}}\n"
        "    aggregations: [{name: n, function: count, window: 1h}]\n"
    )
    redis = RedisServer(tmp_path / "r")  # not started: its port refuses
    produce_events(kafka, topic, 1, time.time_ns() // 1_000_000)
    config = tmp_path / "config.yaml"
    config.write_text(
        f"project: {project}\n"
        f"stores: {{default: {{kind: redis, url: '{redis.url}', cache: false}}}}\n"
        f"stream: {{kafka: {{bootstrap_servers: '{kafka.bootstrap}', session_timeout_ms: 2000}}}}\n"
    )
    stdout, stderr = tmp_path / "out.txt", tmp_path / "err.txt"
    with stdout.open("w") as out, stderr.open("w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "featurestore.cli", "stream", "run", "--config", str(config),
             "--definitions", str(definitions), "--view", "stopped_view", "--metrics-port", "0"],
            cwd=ROOT, stdout=out, stderr=err, text=True,
        )  # fmt: skip
        try:
            wait_until(
                lambda: proc.poll() is not None or "tile store: ConnectionError" in stderr.read_text(),
                60,
                "the marks read waiting for Redis",
            )
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert code == 0, stderr.read_text()[-2000:]
    assert "stopped while the tile store was failing" in stderr.read_text()
    assert "stream processor stopped: stopped_view" in stdout.read_text()


def test_a_topic_created_again_behind_the_stored_offsets_is_applied_from_its_start_not_skipped(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    """A broker with memory storage restarts (or the topic is deleted and created again)
    while Redis keeps the marks: offset 19 was applied, the new partition ends at 5. The
    seek to offset 20 would restart the consumer at 0 and skip 0..4 as duplicates; the
    processor sees the partition ends before its mark, resets the mark and applies the
    new events, counting the reset."""
    from confluent_kafka.admin import AdminClient

    from lineage.kafka import ensure_topic

    broker = TansuBroker(log_path=tmp_path / "tansu.log").start()
    topic = f"recreated-{uuid.uuid4().hex[:8]}"
    view = count_view("recreated_view", topic, project=f"p{uuid.uuid4().hex[:6]}")
    now_ms = time.time_ns() // 1_000_000
    store = RedisTileStore("default", "p", redis_server.url)
    settings = KafkaSettings(bootstrap_servers=broker.bootstrap, session_timeout_ms=2000)

    def run_until(offset: int) -> None:
        proc = StreamProcessor(view, store, settings, "p", ProcessorOptions(poll_seconds=0.05))
        with running(proc) as alive:

            def applied() -> bool:
                alive()
                return store.marks(view, topic).get(0, NO_MARK).offset == offset

            wait_until(applied, 60, f"offset {offset} applied")

    def resets() -> float:
        labels = {"view": "recreated_view"}
        return REGISTRY.get_sample_value("featurestore_stream_partition_resets_total", labels) or 0.0

    try:
        produce_events(broker, topic, 20, now_ms)
        run_until(19)
        broker.stop()
        broker.start()  # memory storage: no topics, no groups
        ensure_topic(AdminClient({"bootstrap.servers": broker.bootstrap}), topic, 1, 1)
        produce_events(broker, topic, 5, now_ms)
        before = (resets(), counted("recreated_view", "duplicate"))
        run_until(4)
        assert (resets(), counted("recreated_view", "duplicate")) == (before[0] + 1, before[1])
        assert count_of_key_1(store, view, now_ms) == 25  # the first topic's 20 events stay
    finally:
        store.close()
        broker.stop()


def gauge(name: str, view: str) -> float:
    return REGISTRY.get_sample_value(name, {"view": view}) or 0.0


def test_a_restarted_processor_whose_writes_wait_reports_the_age_of_what_it_had_applied(
    kafka: TansuBroker, tmp_path: Path
) -> None:
    """Before its first write of this run lands, a restarted processor's lag is the age
    of the newest event its stored marks hold, not 0: a processor that crashes (or
    waits) on every start still shows a growing lag."""
    topic = f"restarted-{uuid.uuid4().hex[:8]}"
    view = count_view("restarted_view", topic, project=f"p{uuid.uuid4().hex[:6]}")
    two_minutes_ago = time.time_ns() // 1_000_000 - 120_000
    redis = RedisServer(tmp_path / "r").start()
    store = RedisTileStore("default", "p", redis.url)
    settings = KafkaSettings(bootstrap_servers=kafka.bootstrap, session_timeout_ms=2000)
    options = ProcessorOptions(batch_messages=5, poll_seconds=0.05, lag_interval_seconds=0.1)

    def applied(alive: Callable[[], None], offset: int) -> Callable[[], bool]:
        def check() -> bool:
            alive()
            return store.marks(view, topic).get(0, NO_MARK).offset == offset

        return check

    try:
        produce_events(kafka, topic, 10, two_minutes_ago)
        with running(StreamProcessor(view, store, settings, "p", options)) as alive:
            wait_until(applied(alive, 9), 60, "the first ten events")
        produce_events(kafka, topic, 10, two_minutes_ago)
        redis.cli("CLIENT", "PAUSE", "60000", "WRITE")  # the next run's writes wait
        with running(StreamProcessor(view, store, settings, "p", options)) as alive:
            wait_until(
                lambda: alive() or gauge("featurestore_stream_lag_seconds", "restarted_view") >= 100,
                60,
                "the lag of the stored watermark",
            )
            redis.cli("CLIENT", "UNPAUSE")
            wait_until(applied(alive, 19), 60, "the next ten events")
    finally:
        store.close()
        redis.stop()


def test_a_processor_waiting_for_redis_at_its_start_reports_the_messages_waiting_and_a_growing_lag(
    kafka: TansuBroker, tmp_path: Path
) -> None:
    """The marks cannot be read (Redis is down), so the partitions are not assigned yet:
    the lag is measured meanwhile (from Kafka's committed offsets, here none: the topic's
    start), its seconds growing from when the processor first saw messages waiting."""
    topic = f"nomarks-{uuid.uuid4().hex[:8]}"
    view = count_view("nomarks_view", topic, project=f"p{uuid.uuid4().hex[:6]}")
    redis = RedisServer(tmp_path / "r")  # not started yet: its port refuses
    store = RedisTileStore("default", "p", redis.url)
    settings = KafkaSettings(bootstrap_servers=kafka.bootstrap, session_timeout_ms=2000)
    options = ProcessorOptions(poll_seconds=0.05, lag_interval_seconds=0.1)
    try:
        produce_events(kafka, topic, 5, time.time_ns() // 1_000_000)
        with running(StreamProcessor(view, store, settings, "p", options)) as alive:

            def waiting() -> bool:
                alive()
                # (not 5: Tansu answers ListOffsets with the start of the last batch written + 1)
                return (
                    gauge("featurestore_stream_lag_messages", "nomarks_view") > 0
                    and gauge("featurestore_stream_lag_seconds", "nomarks_view") > 0
                )

            wait_until(waiting, 60, "messages waiting, for a growing time")
            redis.start()

            def applied() -> bool:
                alive()
                return store.marks(view, topic).get(0, NO_MARK).offset == 4

            wait_until(applied, 60, "the events, once Redis answers")
    finally:
        store.close()
        redis.stop()


class FreezingStore(MemoryTileStore):
    """A real memory tile store that freezes the broker once its first batch is written:
    the next batch's dead letter finds no broker to take it."""

    def __init__(self, broker: TansuBroker) -> None:
        super().__init__()
        self.broker = broker
        self.frozen = False

    def apply(self, view: FeatureView, batch: TileBatch) -> str | None:
        refused = super().apply(view, batch)
        if not self.frozen:
            self.frozen = True
            self.broker.pause()
        return refused


def test_a_dead_letter_the_broker_does_not_take_holds_its_batch_until_it_is_delivered_and_its_lag_grows(
    tmp_path: Path,
) -> None:
    """The dead letter's delivery fails (message timeout: the broker is frozen). A flush
    returning 0 used to count as delivered, and the batch's offsets moved past a dead
    letter that was lost. Now the letter is produced again until its delivery report says
    so, and only then is the batch written; meanwhile the lag is measured (it used to
    stay at its last figure, ~0, while the processor waited: no lag alert could fire)."""
    broker = TansuBroker(log_path=tmp_path / "tansu.log").start()
    topic = f"undelivered-{uuid.uuid4().hex[:8]}"
    view = count_view("undelivered_view", topic)
    store = FreezingStore(broker)
    # A session longer than the broker stays frozen (~10 s): with 2 s, a processor that had
    # not taken the dead letter from its queue within 2 s of the freeze (a loaded suite) lost
    # its partition to the session's timeout, queue and all, and never met the dead letter.
    settings = KafkaSettings(bootstrap_servers=broker.bootstrap, session_timeout_ms=30_000)
    options = ProcessorOptions(
        batch_messages=1, poll_seconds=0.05, dead_letter_timeout_seconds=1, lag_interval_seconds=0.1
    )
    try:
        # Both messages in one record batch (held by linger.ms until the flush): a fetch
        # returns a batch whole, so the processor has the second before its first write
        # freezes the broker. Sent separately, a fetch could return the first alone, and
        # the second, the dead letter, would wait for a broker that never answers again.
        producer = topic_producer(broker, topic, **{"linger.ms": 10_000})
        producer.produce(
            topic, key=b"1", value=json.dumps({"u": 1, "ts": time.time_ns() // 1_000_000}).encode()
        )
        producer.produce(topic, key=b"1", value=b"not json")
        assert producer.flush(10) == 0
        with running(StreamProcessor(view, store, settings, "p", options)) as alive:
            wait_until(
                lambda: (
                    alive()
                    or gauge("featurestore_stream_dead_letter_failures_total", "undelivered_view") >= 2
                ),
                120,  # hang guard: the consumer group's join alone took 5-20 s under a loaded suite
                "the dead letter's delivery failing, twice",
            )
            assert store.marks(view, topic)[0].offset == 0  # not past the undelivered dead letter
            wait_until(
                lambda: (
                    alive()
                    or (
                        gauge("featurestore_stream_lag_seconds", "undelivered_view") >= 5
                        and gauge("featurestore_stream_lag_messages", "undelivered_view") >= 1
                    )
                ),
                60,
                "the lag growing while the dead letter waits",
            )
            assert store.marks(view, topic)[0].offset == 0
            broker.resume()

            def applied() -> bool:
                alive()
                return store.marks(view, topic)[0].offset == 1

            wait_until(applied, 60, "the batch written once its dead letter is delivered")
        # at least once: the attempts that timed out in the frozen broker's socket may land too
        letters = dead_letters(broker, f"{topic}.dlq", 1)
        source = f"{topic}:0:1".encode()
        assert all(
            m.value() == b"not json" and dict(m.headers())["featurestore-source"] == source for m in letters
        )
    finally:
        broker.resume()
        broker.stop()


def test_an_event_further_ahead_than_a_minute_and_the_longest_window_is_dead_lettered_not_stored(
    kafka: TansuBroker, redis_server: RedisServer
) -> None:
    """Two days ahead with a 1-hour window: no window would reach its tile for two days,
    while Redis kept it (tiles are dropped from the old end) for as long as the key is
    written. It is malformed instead, with why."""
    topic = f"ahead-{uuid.uuid4().hex[:8]}"
    view = count_view("ahead_view", topic, project=f"p{uuid.uuid4().hex[:6]}")
    now_ms = time.time_ns() // 1_000_000
    producer = topic_producer(kafka, topic)
    for ts in (now_ms, now_ms + 2 * 86_400_000, now_ms + 3_000_000):  # now, 2 days and 50 minutes ahead
        producer.produce(topic, key=b"1", value=json.dumps({"u": 1, "ts": ts}).encode())
    assert producer.flush(10) == 0
    store = RedisTileStore("default", "p", redis_server.url)
    settings = KafkaSettings(bootstrap_servers=kafka.bootstrap, session_timeout_ms=2000)
    try:
        with running(
            StreamProcessor(view, store, settings, "p", ProcessorOptions(poll_seconds=0.05))
        ) as alive:

            def applied() -> bool:
                alive()
                return store.marks(view, topic).get(0, NO_MARK).offset == 2

            wait_until(applied, 60, "the three events")
        [blob] = asyncio.run(read_once(store, view, ["1"]))
    finally:
        store.close()
    layout = view_layout(view)
    assert blob is not None
    stored_tiles = sorted(int(r[0]) for r in struct.iter_unpack(f"<{layout.width}d", blob))
    assert stored_tiles == sorted(
        {(now_ms + 3_000_000) * 1000 // layout.tile_us, now_ms * 1000 // layout.tile_us}
    )
    assert (counted("ahead_view", "applied"), counted("ahead_view", "dead_lettered")) == (2, 1)
    [letter] = dead_letters(kafka, f"{topic}.dlq", 1)
    reason = dict(letter.headers())["featurestore-error"].decode()
    assert "is more than 60s + the longest window (3600s) ahead of the processor's clock" in reason


def test_processors_of_an_old_and_a_new_definition_each_read_every_partition(
    kafka: TansuBroker, redis_server: RedisServer
) -> None:
    """A rolling deploy of a changed stream view: processors of the old and of the new
    definition run at once. Their consumer groups differ by the layout, so neither takes
    partitions from the other: each fills its own tiles from the whole topic."""
    topic = f"rolling-{uuid.uuid4().hex[:8]}"
    project = f"p{uuid.uuid4().hex[:6]}"
    old = count_view("rolling_view", topic, project=project)
    new = count_view("rolling_view", topic, project=project, allowed_lateness="1m")  # another layout
    assert old.layout != new.layout
    produce_events(kafka, topic, 10, time.time_ns() // 1_000_000)
    store = RedisTileStore("default", project, redis_server.url)
    settings = KafkaSettings(bootstrap_servers=kafka.bootstrap, session_timeout_ms=2000)
    options = ProcessorOptions(poll_seconds=0.05)
    old_proc, new_proc = (StreamProcessor(v, store, settings, project, options) for v in (old, new))
    try:
        with running(old_proc) as old_alive, running(new_proc) as new_alive:

            def both_applied() -> bool:
                old_alive()
                new_alive()
                return all(store.marks(v, topic).get(0, NO_MARK).offset == 9 for v in (old, new))

            wait_until(both_applied, 60, "the topic applied to both layouts")
    finally:
        store.close()
    assert old_proc.group_id == f"featurestore-stream-{project}-rolling_view-{old.layout}"


def test_the_marks_hash_expires_a_week_after_the_tiles_written_with_it(redis_server: RedisServer) -> None:
    """docs/streaming.md: after a definition changed, the old layout's keys expire. The
    marks hash too, but after every tile written with it (then a processor reads the
    topic again from its start, whose events are out of every window by then), a key
    whose newest tile is ahead of the clock included (kept that much longer)."""
    import redis as redis_client

    from featurestore.streaming.store import PartitionMark, ahead_seconds, ttl_seconds

    project = f"p{uuid.uuid4().hex[:6]}"
    view = count_view("expiring_view", "t", project=project)
    store = RedisTileStore("default", project, redis_server.url)
    now_us = time.time_ns() // 1000
    acc = TileAccumulator(view_layout(view))
    acc.add("1", now_us, {})
    batch = TileBatch(
        "t", {0: (-1, PartitionMark(0, now_us))}, acc.records, now_us // view_layout(view).tile_us
    )
    try:
        assert store.apply(view, batch) is None
    finally:
        store.close()
    client = redis_client.Redis.from_url(redis_server.url)
    prefix = f"fs:{project}:expiring_view:t{view.layout}:"
    tiles_ms, marks_ms = client.pttl(prefix + "k:1"), client.pttl(prefix + "marks")
    assert 0 < tiles_ms <= ttl_seconds(view) * 1000
    week_after_ms = (ttl_seconds(view) + ahead_seconds(view)) * 1000 + 7 * 86_400_000
    assert week_after_ms - 60_000 < marks_ms <= week_after_ms
