"""A dead letter of a message whose header key is not UTF-8, with a real Kafka-protocol
broker and a real Redis: the letter is sent and the processor goes on. Reading such a
message's headers in confluent-kafka raised SystemError (the processor stopped on every
restart), then, read inside a guard, crashed the process with a segfault after other
stream tests had run (review s55): dead letters never read them, nor does this test."""

from __future__ import annotations

import ctypes
import uuid
from pathlib import Path

import confluent_kafka

from featurestore.streaming.processor import ProcessorOptions, StreamProcessor
from featurestore.streaming.redis_store import RedisTileStore
from lineage.kafka import KafkaSettings
from tests.integration.test_stream_resilience import counted, dead_letters, run_until_marked, sku_view
from tests.servers import RedisServer, TansuBroker

BAD_KEY = b"bad\xff\xfekey"  # not UTF-8: header keys are bytes on the wire


class _Mem(ctypes.Structure):
    _fields_ = [("ptr", ctypes.c_void_p), ("size", ctypes.c_size_t)]


class _Header(ctypes.Structure):
    _fields_ = [("name", ctypes.c_char_p), ("val", ctypes.c_void_p), ("size", ctypes.c_ssize_t)]


class _U(ctypes.Union):
    _fields_ = [("cstr", ctypes.c_char_p), ("mem", _Mem), ("header", _Header), ("pad", ctypes.c_char * 64)]


class _VU(ctypes.Structure):  # rd_kafka_vu_t
    _fields_ = [("vtype", ctypes.c_int), ("u", _U)]


def produce_with_raw_header_key(bootstrap: str, topic: str, value: bytes, header_key: bytes) -> None:
    """One message through librdkafka's C API (``rd_kafka_produceva``): confluent-kafka's
    ``produce`` takes only str header keys, while other clients send any bytes."""
    libs = Path(confluent_kafka.__file__).parent.parent / "confluent_kafka.libs"
    wheels = sorted(libs.glob("librdkafka*.so*"))  # the wheel's own librdkafka, else the system's
    lib = ctypes.CDLL(str(wheels[0]) if wheels else "librdkafka.so.1")
    lib.rd_kafka_conf_new.restype = ctypes.c_void_p
    lib.rd_kafka_conf_set.argtypes = [
        ctypes.c_void_p,
        ctypes.c_char_p,
        ctypes.c_char_p,
        ctypes.c_char_p,
        ctypes.c_size_t,
    ]
    lib.rd_kafka_new.restype = ctypes.c_void_p
    lib.rd_kafka_new.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t]
    lib.rd_kafka_produceva.restype = ctypes.c_void_p
    lib.rd_kafka_produceva.argtypes = [ctypes.c_void_p, ctypes.POINTER(_VU), ctypes.c_size_t]
    lib.rd_kafka_error_string.restype = ctypes.c_char_p
    lib.rd_kafka_error_string.argtypes = [ctypes.c_void_p]
    lib.rd_kafka_flush.argtypes = [ctypes.c_void_p, ctypes.c_int]
    lib.rd_kafka_destroy.argtypes = [ctypes.c_void_p]
    err = ctypes.create_string_buffer(512)
    conf = lib.rd_kafka_conf_new()
    assert lib.rd_kafka_conf_set(conf, b"bootstrap.servers", bootstrap.encode(), err, 512) == 0, err.value
    rk = lib.rd_kafka_new(0, conf, err, 512)  # RD_KAFKA_PRODUCER; takes the conf
    assert rk, err.value
    try:
        body, header_value = (
            ctypes.create_string_buffer(value, len(value)),
            ctypes.create_string_buffer(b"v", 1),
        )
        args = (_VU * 3)()
        args[0].vtype, args[0].u.cstr = 1, topic.encode()  # RD_KAFKA_VTYPE_TOPIC
        args[1].vtype = 4  # RD_KAFKA_VTYPE_VALUE
        args[1].u.mem = _Mem(ctypes.cast(body, ctypes.c_void_p), len(value))
        args[2].vtype = 9  # RD_KAFKA_VTYPE_HEADER
        args[2].u.header = _Header(header_key, ctypes.cast(header_value, ctypes.c_void_p), 1)
        error = lib.rd_kafka_produceva(rk, args, 3)
        assert not error, lib.rd_kafka_error_string(error)
        assert lib.rd_kafka_flush(rk, 10_000) == 0
    finally:
        lib.rd_kafka_destroy(rk)


def test_a_message_whose_header_key_is_not_utf8_is_dead_lettered_without_its_headers_and_the_processor_goes_on(
    kafka: TansuBroker, redis_server: RedisServer
) -> None:
    from confluent_kafka import Producer
    from confluent_kafka.admin import AdminClient

    from lineage.kafka import ensure_topic

    topic = f"rawhdr-{uuid.uuid4().hex[:8]}"
    view = sku_view("rawhdr_view", topic)
    ensure_topic(AdminClient({"bootstrap.servers": kafka.bootstrap}), topic, 1, 1)
    producer = Producer({"bootstrap.servers": kafka.bootstrap})
    producer.produce(topic, value=b'{"sku": "a", "ts": "2026-01-01T00:00:00", "kind": "c"}')
    assert producer.flush(10) == 0
    produce_with_raw_header_key(kafka.bootstrap, topic, b"not json", BAD_KEY)
    producer.produce(topic, value=b'{"sku": "a", "ts": "2026-01-01T00:00:01", "kind": "c"}')
    assert producer.flush(10) == 0
    store = RedisTileStore("default", "p", redis_server.url)
    settings = KafkaSettings(bootstrap_servers=kafka.bootstrap, session_timeout_ms=2000)
    try:
        proc = StreamProcessor(view, store, settings, "p", ProcessorOptions(poll_seconds=0.05))
        run_until_marked(proc, store, view, topic, 2, "all three messages applied or dead-lettered")
    finally:
        store.close()
    [letter] = dead_letters(kafka, f"{topic}.dlq", 1)
    headers = dict(letter.headers())
    assert list(headers) == [
        "featurestore-error",
        "featurestore-view",
        "featurestore-source",
        "featurestore-original-timestamp",
    ]
    assert headers["featurestore-error"] == b"not valid JSON: JSON is malformed: invalid character (byte 4)"
    assert headers["featurestore-source"] == f"{topic}:0:1".encode()
    assert letter.value() == b"not json"
    assert counted("rawhdr_view", "applied") == 2  # the events around it
