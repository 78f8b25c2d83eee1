"""The lineage consumer's lag per partition: only for partitions it owns, also when the
group takes them away while a lag report waits for the broker (the report runs on the
monitor's thread, the rebalance callbacks on the consume thread)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

from prometheus_client import REGISTRY

from lineage.consumer import LineageConsumer
from lineage.topics import ReadPositions


class FakeKafka:
    """The consumer calls the report makes; ``meanwhile`` runs while committed() waits."""

    def __init__(self, meanwhile: Callable[[], None]) -> None:
        self.meanwhile = meanwhile

    def get_watermark_offsets(self, tp: Any, cached: bool = True) -> tuple[int, int]:
        return 0, 100

    def committed(self, tps: list[Any], timeout: float = 2) -> list[Any]:
        self.meanwhile()
        return [SimpleNamespace(partition=tp.partition, offset=40) for tp in tps]

    def commit(self, asynchronous: bool = False) -> None:
        pass


def lag(partition: int) -> float | None:
    return REGISTRY.get_sample_value(
        "featurestore_lineage_consumer_lag_messages", {"partition": str(partition)}
    )


def test_partitions_lost_during_a_lag_report_keep_no_lag() -> None:
    # (a revoke forgets the partitions' ends first, so its report has no lag to set)
    consumer = LineageConsumer.__new__(LineageConsumer)  # (no Kafka: the parts the report uses)
    consumer._positions = ReadPositions()
    consumer._assignment = threading.Lock()
    consumer._dropping = False
    parts = [SimpleNamespace(partition=70), SimpleNamespace(partition=71)]
    consumer._assigned = list(parts)

    def taken_meanwhile() -> None:
        thread = threading.Thread(target=consumer._on_lost, args=(None, parts))  # the consume thread
        thread.start()
        thread.join()

    consumer._consumer = FakeKafka(lambda: None)  # type: ignore[assignment]
    consumer._report_lag()
    assert lag(70) == 60  # (owned: reported)
    consumer._consumer = FakeKafka(taken_meanwhile)  # type: ignore[assignment]
    consumer._report_lag()
    assert lag(70) is None and lag(71) is None  # another member reports them now
