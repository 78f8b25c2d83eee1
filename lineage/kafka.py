"""Kafka settings shared by the serving-side sink and the lineage consumer.

One type, ``KafkaSettings``, is the ``lineage.kafka`` section of the configuration field
for field; the sink (producer) and the consumer read what they need from it, and
``client_config`` is the librdkafka configuration every client of this cluster starts
from (connection settings live in one place).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator, SecretStr
from pydantic_core import PydanticCustomError

from lineage import TOPIC

SECURITY_PROTOCOLS = ("plaintext", "ssl", "sasl_plaintext", "sasl_ssl")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")

# How often every client re-reads the metadata of its topics. librdkafka's default is
# 300 s. A consumer subscribed to a topic that does not exist yet looks again only at
# that interval whenever its metadata cache holds another topic (here the dead-letter
# topic): the "unknown topic" entry should expire after 100 ms, but the cache expires
# entries in insertion order, so it waits behind the other topic's 15-minute entry and
# the group logic takes it for fresh metadata ("no matching topics based on ... old
# metadata: next metadata refresh in 300000ms" in the cgrp debug log). 5 s bounds that
# wait, and the time to notice a topic that vanished, for one small metadata request
# per client every 5 s.
METADATA_REFRESH_MS = 5_000

# Where librdkafka's own lines go (confluent-kafka's ``logger`` setting), instead of its
# stderr printer: through Python's logging, so log_format json and the level apply, and
# featurestore rate-limits them (featurestore/logs.py: a client whose broker is down
# writes 6-20 a second). confluent-kafka then hands them over in poll(), consume() and
# flush(): every client here is polled, an AdminClient by ensure_topic.
RDKAFKA_LOGGER = "lineage.kafka.rdkafka"


# Each positive, and at most what librdkafka or the broker takes (a larger value failed the
# start with librdkafka's message, naming its property instead of the setting): a topic's
# partitions are an int32, its replication factor an int16; session.timeout.ms goes to
# 3,600,000, queue.buffering.max.messages and message.timeout.ms (buffer_seconds x 1000)
# to 2^31-1.
_MAXIMUM = {
    "partitions": 2**31 - 1,
    "replication_factor": 2**15 - 1,
    "session_timeout_ms": 3_600_000,
    "buffer_messages": 2**31 - 1,
    "buffer_seconds": (2**31 - 1) // 1000,
}


def _count(value: Any) -> Any:
    """From the config (YAML or the environment's text): a positive integer, 2.0 or
    ``true`` refused rather than converted, the messages of featurestore.settings'
    ``Count`` (which lineage does not import: it depends on the model types only)."""
    if isinstance(value, str):
        try:
            value = int(value.strip())
        except ValueError:
            raise PydanticCustomError(
                "setting", "expected an integer, got {value}", {"value": repr(value)}
            ) from None
    if isinstance(value, bool) or not isinstance(value, int):
        raise PydanticCustomError("setting", "expected an integer, got {value}", {"value": repr(value)})
    if value < 1:
        raise PydanticCustomError(
            "setting", "expected a positive integer, got {value}", {"value": repr(value)}
        )
    return value


def _up_to(name: str) -> AfterValidator:
    """At most the setting's ``_MAXIMUM``, with featurestore.settings' message."""
    limit = _MAXIMUM[name]

    def check(value: int) -> int:
        if value > limit:
            raise PydanticCustomError(
                "setting", f"expected at most {limit}, got {{value}}", {"value": repr(value)}
            )
        return value

    return AfterValidator(check)


Count = Annotated[int, BeforeValidator(_count)]


@dataclass(frozen=True, slots=True)
class KafkaSettings:
    bootstrap_servers: str = "127.0.0.1:9092"
    topic: str = TOPIC
    # Count: from the config, 2.0 or true is refused, not converted
    partitions: Annotated[Count, _up_to("partitions")] = 6  # when the topic is created by us
    replication_factor: Annotated[Count, _up_to("replication_factor")] = 1
    group_id: str = "featurestore-lineage"  # the consumer group
    session_timeout_ms: Annotated[Count, _up_to("session_timeout_ms")] = 10_000  # consumer group session
    # producer buffer bound; beyond it events are dropped
    buffer_messages: Annotated[Count, _up_to("buffer_messages")] = 100_000
    # how long an undeliverable event is retried before it counts as lost
    buffer_seconds: Annotated[Count, _up_to("buffer_seconds")] = 120
    # Security (docs/security.md), passed to librdkafka by client_config().
    security_protocol: str = "plaintext"  # plaintext | ssl | sasl_plaintext | sasl_ssl
    sasl_mechanism: str = "SCRAM-SHA-512"  # PLAIN | SCRAM-SHA-256 | SCRAM-SHA-512
    sasl_username: str = ""
    sasl_password: SecretStr = SecretStr("")  # or sasl_password_file
    ssl_ca_file: str = ""  # the brokers' CA (default: the system's)
    ssl_cert_file: str = ""  # client certificate (mutual TLS), with ssl_key_file
    ssl_key_file: str = ""
    ssl_key_password: SecretStr = SecretStr("")  # of an encrypted ssl_key_file
    ssl_check_hostname: bool = True

    def __post_init__(self) -> None:
        for name, maximum in _MAXIMUM.items():  # librdkafka or the broker would refuse them later, mid-run
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: expected a positive integer, got {value!r}")
            if value > maximum:
                raise ValueError(f"{name}: expected at most {maximum}, got {value!r}")
        if self.security_protocol not in SECURITY_PROTOCOLS:
            raise ValueError(
                f"security_protocol {self.security_protocol!r}: use {', '.join(SECURITY_PROTOCOLS)}"
            )
        if self.security_protocol.startswith("sasl"):
            if self.sasl_mechanism not in SASL_MECHANISMS:
                raise ValueError(f"sasl_mechanism {self.sasl_mechanism!r}: use {', '.join(SASL_MECHANISMS)}")
            if not self.sasl_username or not self.sasl_password.get_secret_value():
                raise ValueError(
                    f"security_protocol {self.security_protocol} needs sasl_username and sasl_password"
                )
        if bool(self.ssl_cert_file) != bool(self.ssl_key_file):
            raise ValueError("ssl_cert_file and ssl_key_file go together")
        self._check_unused()

    def _check_unused(self) -> None:
        """A TLS or SASL setting the protocol would ignore is refused: the operator meant
        encryption or authentication and would silently get neither."""
        protocol = self.security_protocol
        given = {
            "ssl_ca_file": self.ssl_ca_file,
            "ssl_cert_file": self.ssl_cert_file,
            "ssl_key_file": self.ssl_key_file,
            "ssl_key_password": self.ssl_key_password.get_secret_value(),
            "sasl_username": self.sasl_username,
            "sasl_password": self.sasl_password.get_secret_value(),
        }
        for name, value in given.items():
            if not value:
                continue
            if name.startswith("ssl_") and not protocol.endswith("ssl"):
                raise ValueError(
                    f"{name} is set but security_protocol {protocol} has no TLS; use ssl or sasl_ssl"
                )
            if name.startswith("sasl_") and not protocol.startswith("sasl"):
                raise ValueError(
                    f"{name} is set but security_protocol {protocol} has no SASL; use sasl_ssl or sasl_plaintext"
                )

    @property
    def dead_letter_topic(self) -> str:
        return f"{self.topic}.dlq"

    @property
    def heartbeat_interval_ms(self) -> int:
        # Kafka's advice: at most a third of the session timeout; a fifth leaves room
        # for a slow poll.
        return max(self.session_timeout_ms // 5, 100)

    def client_config(self) -> dict[str, Any]:
        """The librdkafka settings every client (producer, consumer, admin) starts from.
        They hold the SASL password: never log them."""
        config: dict[str, Any] = {
            "bootstrap.servers": self.bootstrap_servers,
            "log.connection.close": False,
            "topic.metadata.refresh.interval.ms": METADATA_REFRESH_MS,
            "logger": logging.getLogger(RDKAFKA_LOGGER),
        }
        protocol = self.security_protocol
        if protocol == "plaintext":
            return config
        config["security.protocol"] = protocol
        if protocol.startswith("sasl"):
            config["sasl.mechanism"] = self.sasl_mechanism
            config["sasl.username"] = self.sasl_username
            config["sasl.password"] = self.sasl_password.get_secret_value()
        if protocol.endswith("ssl"):
            config["ssl.endpoint.identification.algorithm"] = "https" if self.ssl_check_hostname else "none"
            optional = {
                "ssl.ca.location": self.ssl_ca_file,
                "ssl.certificate.location": self.ssl_cert_file,
                "ssl.key.location": self.ssl_key_file,
                "ssl.key.password": self.ssl_key_password.get_secret_value(),
            }
            config.update({k: v for k, v in optional.items() if v})
        return config


def close_producer(producer: Any) -> None:
    """End a producer's threads and sockets now (blocking: run it in a thread). What it
    still holds is purged first (its delivery reports say so, for whoever counts them),
    so ``close`` does not wait for messages a dead broker would never take; a producer
    may refer back to its owner through a callback, and dropping it would leave it to a
    later garbage collection, reconnecting until then. ``close`` is safe beside calls
    still running in other threads from confluent-kafka 2.16 on (the required version)."""
    try:
        producer.purge()
        producer.poll(0)
    finally:
        producer.close()


def ensure_topic(admin: Any, name: str, partitions: int, replication_factor: int) -> str:
    """Create the topic unless it exists, and return its topic id ("" when the broker
    does not say; blocking, run it in a thread). The id tells a topic from one
    re-created under the same name, e.g. by a broker that lost its data. Raises when
    the broker cannot be asked or refuses for another reason than the topic's existence."""
    try:
        return _ensure_topic(admin, name, partitions, replication_factor)
    finally:
        admin.poll(0)  # its librdkafka lines so far (RDKAFKA_LOGGER), which nothing else serves


def _ensure_topic(admin: Any, name: str, partitions: int, replication_factor: int) -> str:
    from confluent_kafka import TopicCollection
    from confluent_kafka.admin import NewTopic  # type: ignore[attr-defined]

    if name not in admin.list_topics(timeout=3).topics:
        topic = NewTopic(name, num_partitions=partitions, replication_factor=replication_factor)
        for fut in admin.create_topics([topic]).values():
            try:
                fut.result(timeout=5)
            except Exception as e:
                if "already exists" not in str(e).lower() and "TOPIC_ALREADY_EXISTS" not in str(e):
                    raise
    try:
        described = admin.describe_topics(TopicCollection([name]))[name].result(timeout=5)
    except Exception:
        return ""  # a broker without topic ids (before Kafka 2.8): re-creation goes unseen
    return str(described.topic_id)
