"""Serving-side lineage: record what was served, emit one event per (feature, version)
per window, never make a join wait.

``record`` is called by the join engine for every successful join and costs one dict
lookup and an addition: requests are aggregated per join plan (plans are cached per
registry snapshot, so steady traffic has a handful). Once per window a background task
expands plans into features, builds the events and puts them on a bounded queue; a
second task hands queued events to the sink. A full queue drops the window's events and
counts their served values as broken lineage; so does a feature whose source table cannot
be resolved. Nothing is lost silently.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from featurestore.model import DerivedView, FeatureRef, FeatureView
from featurestore.plan import JoinPlan, ServingState
from lineage import metrics
from lineage.events import LineageEvent
from lineage.sinks import LineageSink

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class EmitterConfig:
    window_seconds: float = 1.0
    queue_size: int = 10_000  # events waiting for the sink
    trace_sample: int = 5  # trace ids kept per event
    service: str = "featurestore"  # this server instance, e.g. featurestore@10.0.0.7:8080
    close_seconds: float = 5.0  # on shutdown, how long the sink may take with what is queued


@dataclass(slots=True)
class _Served:
    """One plan's traffic in the current window."""

    plan: JoinPlan
    state: ServingState
    rows: int = 0
    spans: list[Any] = field(default_factory=list)


@dataclass(slots=True)
class _Agg:
    view: FeatureView | DerivedView
    version: int
    registry_version: int
    project: str
    count: int = 0
    trace_ids: list[str] = field(default_factory=list)


class LineageEmitter:
    def __init__(
        self,
        sink: LineageSink,
        table_uri: Callable[[FeatureView], str | None],
        config: EmitterConfig | None = None,
    ) -> None:
        self.sink = sink
        self.table_uri = table_uri
        self.config = config or EmitterConfig()
        self._window: dict[JoinPlan, _Served] = {}
        w = self.config.window_seconds
        self._window_start = time.time() // w * w  # windows align to the clock
        self._queue: asyncio.Queue[list[LineageEvent]] = asyncio.Queue()
        self._queued = 0
        self._tasks: list[asyncio.Task[None]] = []

    # -- hot path --------------------------------------------------------------------

    def record(self, plan: JoinPlan, state: ServingState, rows: int, span: Any) -> None:
        served = self._window.get(plan)
        if served is None:
            served = self._window[plan] = _Served(plan, state)
        served.rows += rows
        if span is not None and len(served.spans) < self.config.trace_sample:
            served.spans.append(span)

    # -- background ------------------------------------------------------------------

    async def start(self) -> None:
        await self.sink.start()
        self._tasks = [
            asyncio.create_task(self._tick(), name="lineage-window"),
            asyncio.create_task(self._drain(), name="lineage-sink"),
        ]

    async def close(self) -> None:
        """Flush the last window, give the sink a moment, then stop. What the sink did
        not take by then is counted as undelivered: the break rate stays honest."""
        for t in self._tasks[:1]:
            t.cancel()
        try:
            self.flush()
        except Exception:  # counted broken by flush; the sink must still be drained and closed
            log.exception("the last lineage window could not be built; its values are counted as broken")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._queue.join(), timeout=self.config.close_seconds)
        for t in self._tasks[1:]:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        left = 0
        while not self._queue.empty():
            left += self._undelivered(self._queue.get_nowait())
            self._queue.task_done()
        if left:
            log.warning("lineage emitter closed with %d events not handed to the sink", left)
        await self.sink.close()

    def _undelivered(self, events: list[LineageEvent]) -> int:
        metrics.BROKEN.labels("undelivered").inc(sum(e.served_count for e in events))
        metrics.EVENTS.labels("failed").inc(len(events))
        self._queued -= len(events)
        metrics.QUEUE.set(self._queued)
        return len(events)

    async def _tick(self) -> None:
        # Windows are aligned to the clock (whole seconds for 1 s windows), so an event's
        # timestamp is its window's exact start on every server.
        # Sleep until the end of the open window, not "to the next boundary of the clock":
        # uvloop can wake a timer a little early, and a tick just before a boundary then
        # slept ~0 s and flushed again and again, each flush moving the window a whole
        # window ahead (event timestamps ran minutes into the future within minutes).
        # At most two windows, though: after the wall clock steps back by X (NTP, a resumed
        # VM) the open window ends X later by the clock, and one sleep of X held every event
        # back that long in one window. Capped, a window lasts 2w of real time and is still
        # stamped one window after the last (stamps never repeat: a repeated one is the same
        # event to the graph, and its values would count once), so the stamps lose w on the
        # clock per window and meet it again after 2X.
        w = self.config.window_seconds
        while True:
            await asyncio.sleep(min(max(self._window_start + w - time.time(), 0.001), 2 * w))
            try:
                self.flush()
            except Exception:  # one bad window must not end lineage for the process's life
                log.exception("lineage window could not be built; its values are counted as broken")

    def flush(self) -> None:
        """Close the current window: build its events and queue them (never blocks)."""
        window, self._window = self._window, {}
        w = self.config.window_seconds
        start = self._window_start
        # The tick fires at a clock boundary (give or take scheduling jitter): the next
        # window starts there. Timestamps never repeat: they identify events.
        self._window_start = max(round(time.time() / w) * w, start + w)
        if not window:
            return
        try:
            events, served, unresolved = self.build(window, start)
        except Exception:
            lost = sum(s.rows * len(s.plan.refs) for s in window.values())
            metrics.SERVED.inc(lost)
            metrics.BROKEN.labels("unresolved").inc(lost)
            raise
        metrics.SERVED.inc(served)
        if unresolved:
            metrics.BROKEN.labels("unresolved").inc(unresolved)
        if not events:
            return
        if self._queued + len(events) > self.config.queue_size:
            metrics.BROKEN.labels("queue_full").inc(sum(e.served_count for e in events))
            metrics.EVENTS.labels("dropped").inc(len(events))
            return
        self._queued += len(events)
        metrics.QUEUE.set(self._queued)
        metrics.EVENTS.labels("emitted").inc(len(events))
        self._queue.put_nowait(events)

    def build(self, window: dict[JoinPlan, _Served], start: float) -> tuple[list[LineageEvent], int, int]:
        """Events of one window; also the served and unresolved value counts."""
        # Per feature, its version and the snapshot that served it: a canary's window has
        # both snapshots' traffic, each its own event (a feature the candidate did not
        # change has the same version in both; summed, it read as all served by one).
        aggs: dict[tuple[str, int, int], _Agg] = {}
        served = unresolved = 0
        for s in window.values():
            snapshot = s.state.snapshot
            trace_ids = [format(sp.get_span_context().trace_id, "032x") for sp in s.spans]
            defs = snapshot.definitions
            for ref in s.plan.refs:  # what was served (not the stored inputs of derived features)
                fid = str(ref)
                version = snapshot.feature_versions.get(fid, snapshot.version)
                key = (fid, version, snapshot.version)
                agg = aggs.get(key)
                if agg is None:
                    view = defs.views.get(ref.view) or defs.derived_views[ref.view]
                    agg = aggs[key] = _Agg(view, version, snapshot.version, defs.project)
                agg.count += s.rows
                room = self.config.trace_sample - len(agg.trace_ids)
                if room > 0:
                    agg.trace_ids += trace_ids[:room]
        timestamp = _iso(start)
        events = []
        for (fid, version, _), agg in aggs.items():
            served += agg.count
            view = agg.view
            if isinstance(view, DerivedView):
                table: str | None = derived_table(agg.project, view.name)
                deps = derived_deps(view, FeatureRef(*fid.split(":", 1)))
            else:
                table, deps = self.table_uri(view), upstream_deps(view)
            if table is None:
                unresolved += agg.count
                continue
            events.append(
                LineageEvent(
                    feature_id=fid,
                    feature_version=version,
                    source_table=table,
                    timestamp=timestamp,
                    upstream_deps=deps,
                    registry_version=agg.registry_version,
                    served_count=agg.count,
                    trace_ids=agg.trace_ids,
                    service=self.config.service,
                )
            )
        return events, served, unresolved

    async def _drain(self) -> None:
        while True:
            events = await self._queue.get()
            try:
                await self.sink.send(events)
            except asyncio.CancelledError:
                # Shutdown cut the send short: whether any of it went out is unknown, so
                # the batch counts as undelivered (an overcount, never an undercount).
                self._undelivered(events)
                self._queue.task_done()
                raise
            except Exception:  # a sink must not kill the drain: count and go on
                log.exception("lineage sink failed")
                self._undelivered(events)
            else:
                self._queued -= len(events)
                metrics.QUEUE.set(self._queued)
            self._queue.task_done()


def _iso(t: float) -> str:
    """Epoch seconds as RFC 3339 UTC to the millisecond (rounded to the nearest: x.9996
    is the next second, not a fraction of 1000, review s56)."""
    whole, frac = divmod(round(t * 1000), 1000)
    base = datetime.fromtimestamp(whole, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{base}.{frac:03d}Z" if frac else f"{base}Z"


def derived_table(project: str, view: str) -> str:
    """Where lineage says a derived feature comes from: computed in the join, no table."""
    return f"derived://{project}/{view}"


def derived_deps(view: DerivedView, ref: FeatureRef) -> list[str]:
    """A derived feature's inputs: feature ids, and ``request:NAME`` for request fields."""
    i = view.feature_index(ref.feature)
    return [] if i is None else list(view.features[i].depends_on)


def upstream_deps(view: FeatureView) -> list[str]:
    deps = list(view.upstream)
    if view.batch_source is not None and view.batch_source.uri not in deps:
        deps.append(view.batch_source.uri)
    return deps
