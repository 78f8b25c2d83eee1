"""Closing the Kafka lineage sink ends its librdkafka clients at once (a real Tansu broker)."""

from __future__ import annotations

import gc
import uuid
from pathlib import Path

from lineage.kafka import KafkaSettings
from lineage.sinks import KafkaSink
from tests.integration.test_lineage_pipeline import ev, unit_counts
from tests.servers import TansuBroker
from tests.support import eventually


def librdkafka_threads() -> set[str]:
    """Ids of this process's threads that librdkafka started (it names them rdk:...)."""
    ids = set()
    for task in Path("/proc/self/task").iterdir():
        try:
            if (task / "comm").read_text().startswith("rdk:"):
                ids.add(task.name)
        except OSError:  # a thread that ended meanwhile
            continue
    return ids


async def test_a_closed_sink_ends_its_kafka_clients_without_waiting_for_the_garbage_collector(
    kafka: TansuBroker,
) -> None:
    gc.collect()  # clients other tests left to the collector end now, not during this test
    before = librdkafka_threads()
    sink = KafkaSink(
        KafkaSettings(
            bootstrap_servers=kafka.bootstrap, topic=f"lineage-{uuid.uuid4().hex[:6]}", partitions=1
        ),
        linger_ms=1,
    )
    await sink.start()
    delivered0 = unit_counts()[2]
    await sink.send([ev(1), ev(2)])
    await eventually(lambda: unit_counts()[2] - delivered0 >= 2, 20, "the events delivered")
    its_own = librdkafka_threads() - before  # its producer's and its topic check's admin client's
    assert its_own
    await sink.close()
    # The sink is still referenced here: only close() can have ended them.
    await eventually(lambda: not its_own & librdkafka_threads(), 5, "the sink's client threads to end")
    failed0 = unit_counts()[1]
    await sink.send([ev(3)])  # after close: counted as failed, not raised
    await sink.close()  # a second close does nothing
    assert unit_counts()[1] - failed0 == 1
