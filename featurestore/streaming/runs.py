"""Stream processors as lineage job runs (docs/lineage.md, "Job runs and data versions").

A processor never ends, so it is recorded in windows: a run ``stream:{view}`` starts when
the processor starts and every ``stream.run_window_seconds`` after, and ends (COMPLETE)
with the window's events as rows: ``rows_read`` consumed, ``rows_written`` applied (in
batches written with their offsets). Its input is the topic (``kafka://topic``), its
output the view's tiles. A processor that died ends its open run FAILED. With 60 s
windows a view adds 1,440 runs a day; the in-memory graph keeps the newest 10,000.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence
from typing import Any

from lineage.runs import JobRunEvent, RunRecorder


class _Open:
    def __init__(self, processor: Any, run: JobRunEvent) -> None:
        self.processor = processor
        self.run = run
        self.base = dict(processor.totals)

    def rows(self) -> tuple[int, int]:
        now = self.processor.totals
        read = now.get("consumed", 0) - self.base.get("consumed", 0)
        written = now.get("applied", 0) - self.base.get("applied", 0)
        return read, written


async def _start(recorder: RunRecorder, processor: Any) -> _Open:
    view = processor.view
    run = await recorder.started(
        f"stream:{view.name}",
        inputs=[f"kafka://{processor.topic}"],
        outputs=[processor.store.table_uri(view)],
        view=view.name,
        schema=[(f.name, f.dtype.value) for f in view.features],
    )
    return _Open(processor, run)


async def _end(recorder: RunRecorder, open_run: _Open) -> None:
    read, written = open_run.rows()
    if getattr(open_run.processor, "failed", False):  # set by `stream run` when its thread raised
        await recorder.failed(open_run.run, error="the stream processor stopped with an error")
    else:
        await recorder.finished(open_run.run, rows_read=read, rows_written=written)


async def record_runs(
    recorder: RunRecorder,
    processors: Sequence[Any],
    threads: Sequence[threading.Thread],
    stop: threading.Event,
    window_seconds: float,
) -> None:
    """Record the processors' run windows until ``stop`` is set or every thread is gone;
    then end the open runs (FAIL for a processor whose thread died with an error)."""
    runs: list[_Open | None] = [await _start(recorder, p) for p in processors]
    window_end = time.monotonic() + window_seconds
    while not stop.is_set() and any(t.is_alive() for t in threads):
        await asyncio.sleep(min(0.5, window_seconds))
        if time.monotonic() < window_end:
            continue
        window_end = time.monotonic() + window_seconds
        for i, thread in enumerate(threads):
            open_run = runs[i]
            if open_run is None:
                continue
            await _end(recorder, open_run)
            runs[i] = await _start(recorder, open_run.processor) if thread.is_alive() else None
    stop.set()
    for open_run, thread in zip(runs, threads, strict=True):
        await asyncio.to_thread(thread.join, 30)  # its last batch written and counted first
        if open_run is not None:
            await _end(recorder, open_run)
