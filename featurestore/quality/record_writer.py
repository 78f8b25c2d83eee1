"""Drift records on their way to the lineage graph, off the drift monitor's task.

The monitor tested windows one after another and awaited the graph's write of every
detection inline: a Bolt server that stopped answering (its writes have no deadline)
stalled the tests of every feature, windows were dropped as ``queue_full`` and
FeatureDrift resolved while the drift went on (review s54). Now the monitor only puts
the detections here (a bounded deque: the oldest dropped, counted) and this writer,
a task of its own, hands them to the recorder with a deadline (a write that misses it
is dropped, counted; it may still land: a Bolt auto-commit the server commits after
the cancel). Records a recorder fails to write (it raises) are counted as ``error``, and
those waiting or being written when the server stops as ``shutdown``. The metrics count
every detection either way: a record lost is a hole in the graph's history, not in the
alert.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from typing import TYPE_CHECKING

from featurestore.quality import metrics

if TYPE_CHECKING:
    from featurestore.quality.monitor import DriftRecorder, DriftResult

log = logging.getLogger(__name__)
MAX_RECORDS = 256  # detections waiting for the graph
WRITE_TIMEOUT_SECONDS = 10.0  # one write of the records waiting (up to MAX_RECORDS)


class RecordWriter:
    def __init__(self, recorder: DriftRecorder) -> None:
        self.recorder = recorder
        self.timeout = WRITE_TIMEOUT_SECONDS
        self._queue: collections.deque[DriftResult] = collections.deque()
        self._ready = asyncio.Event()

    def put(self, results: list[DriftResult]) -> None:
        for r in results:
            if len(self._queue) >= MAX_RECORDS:
                dropped = self._queue.popleft()
                metrics.DRIFT_RECORDS_DROPPED.labels(dropped.view, "queue_full").inc()
            self._queue.append(r)
        self._ready.set()

    async def run(self) -> None:
        """The ``drift-records`` task (started and stopped by the monitor's). Cancelled,
        it counts the records it was writing and those waiting as ``shutdown``: they were
        lost uncounted (review 2, s54; a write cut there may have landed, as at a timeout)."""
        batch: list[DriftResult] = []
        try:
            while True:
                await self._ready.wait()
                self._ready.clear()
                while self._queue:
                    batch = list(self._queue)
                    self._queue.clear()
                    await self._write(batch)
                    batch = []
        except asyncio.CancelledError:
            lost = [*batch, *self._queue]
            self._queue.clear()
            if lost:
                log.warning("lineage graph: %d drift record(s) not written: the server stopped", len(lost))
                _count(lost, "shutdown")
            raise

    async def _write(self, batch: list[DriftResult]) -> None:
        deadline = asyncio.timeout(self.timeout)
        try:
            async with deadline:
                await self.recorder.record_drift(batch)
            return
        except Exception as e:  # the recorder's failure (GraphRecorder: the graph's error)
            # only our own deadline is a `timeout`: a TimeoutError the driver raises at once
            # (socket.timeout is TimeoutError) was the graph's answer (review 3, s54)
            if deadline.expired():
                reason = "timeout"
                log.warning(
                    "lineage graph: %d drift record(s) not written: no answer in %g s",
                    len(batch),
                    self.timeout,
                )
            else:
                reason = "error"
                log.warning("lineage graph: %d drift record(s) not written: %s", len(batch), e)
        _count(batch, reason)


def _count(lost: list[DriftResult], reason: str) -> None:
    for r in lost:
        metrics.DRIFT_RECORDS_DROPPED.labels(r.view, reason).inc()
