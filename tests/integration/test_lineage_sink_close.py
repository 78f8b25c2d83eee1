"""Closing the Kafka lineage sink ends its librdkafka clients at once (a real Tansu broker)."""

from __future__ import annotations

import uuid
from pathlib import Path

from lineage.kafka import KafkaSettings
from lineage.sinks import KafkaSink
from tests.integration.test_lineage_pipeline import ev, unit_counts
from tests.servers import TansuBroker
from tests.support import eventually


def librdkafka_threads() -> int:
    """Threads of this process that librdkafka started (it names them rdk:...)."""
    count = 0
    for task in Path("/proc/self/task").iterdir():
        try:
            count += (task / "comm").read_text().startswith("rdk:")
        except OSError:  # a thread that ended meanwhile
            continue
    return count


async def test_a_closed_sink_ends_its_kafka_clients_without_waiting_for_the_garbage_collector(
    kafka: TansuBroker,
) -> None:
    topic = f"lineage-{uuid.uuid4().hex[:6]}"
    before = librdkafka_threads()
    sink = KafkaSink(KafkaSettings(bootstrap_servers=kafka.bootstrap, topic=topic, partitions=1), linger_ms=1)
    await sink.start()
    delivered0 = unit_counts()[2]
    await sink.send([ev(1), ev(2)])
    await eventually(lambda: unit_counts()[2] - delivered0 >= 2, 20, "the events delivered")
    assert librdkafka_threads() > before  # its producer (and its topic check's admin client) run
    await sink.close()
    # The sink is still referenced here: only close() can have ended them.
    assert librdkafka_threads() <= before, sink
