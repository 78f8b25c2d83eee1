"""The running state of one serving process: stores, registry, engine and lineage, the
readiness report, and the background tasks that keep them current.

Background tasks (each named after its one job; ``background.supervised`` restarts one
that ends by accident):

* ``registry-watch`` flags every published change (snapshot, data version, canary);
* ``registry-apply`` serves the latest registry state, retrying with backoff until it
  is served (everything slow happens there, off the hot path; the swap itself is one
  reference assignment);
* ``registry-health`` exports the registry's connection and staleness gauges;
* ``metrics-flush`` folds the hot path's buffered metric updates into prometheus_client;
* ``log-summaries`` writes the counts of rate-limited log lines once an outage goes
  quiet (``featurestore/logs.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from featurestore import logs, metrics
from featurestore.background import supervised
from featurestore.cache import uncached
from featurestore.config import Config
from featurestore.definitions.snapshot import RegistrySnapshot
from featurestore.derived.compiler import cache_dir
from featurestore.errors import Code, FailedPrecondition, FeatureStoreError
from featurestore.factories import Lineage, build_lineage, make_registry, make_serving_stores
from featurestore.freshness import FRESHNESS
from featurestore.health import Readiness
from featurestore.join import JoinEngine, Limits
from featurestore.model import STREAM_STORE_PREFIX, FeatureView
from featurestore.plan import ServingState
from featurestore.preparation import serving_state
from featurestore.quality.monitor import DriftMonitor, build_drift
from featurestore.quality.records import GraphRecorder
from featurestore.quality.sampler import DriftSampler
from featurestore.quality.schedule import ConsistencySchedule
from featurestore.registry.base import Registry, load_state
from featurestore.sources.base import OnlineSource
from featurestore.supervisor import WORKER_ENV
from featurestore.unserved import not_served
from lineage.graph.base import definition_facts

log = logging.getLogger("featurestore")

_APPLY_RETRY_MIN_S = 0.25
_APPLY_RETRY_MAX_S = 5.0
# Hot-path metrics are buffered (metrics.py); this is how stale a scrape of another
# worker's values can be.
# A flush stalls the event loop for what it folds in: a second of batch-1 joins on one
# worker buffers 15,000-30,000 latencies (1.1-2.5 ms to flush even binned by numpy), so
# four smaller flushes a second keep each stall under a p99 budget of milliseconds.
METRICS_FLUSH_SECONDS = 0.25


@dataclass
class Runtime:
    """Everything one serving process runs."""

    config: Config
    registry: Registry
    stores: dict[str, OnlineSource]
    engine: JoinEngine
    lineage: Lineage | None = None
    drift: DriftMonitor | None = None
    stopping: bool = False
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    # Set by the registry watch, cleared by the applier once the change is served;
    # stays set while applying it keeps failing.
    registry_dirty: asyncio.Event = field(default_factory=asyncio.Event)
    registry_apply_error: str | None = None

    def readiness(self) -> Readiness:
        reasons = ["shutting down"] if self.stopping else []
        # Stream views' tile readers (stream:<store>) read their store's server: its state
        # is the store's, reported once under the store's name.
        states = {
            name: s.state().value
            for name, s in self.stores.items()
            if not name.startswith(STREAM_STORE_PREFIX)
        }
        # A store that is down does not make the process unready: its views answer
        # UNAVAILABLE within the deadline while every other view still answers, and
        # the store is shared by all replicas, so failing readiness would take the
        # whole fleet out of the load balancer over one backend.
        degraded = [f"store {n} is {st}" for n, st in states.items() if st != "ready"]
        # A view whose data is gone answers UNAVAILABLE for every key although its
        # store answers: degraded, for the same reason as a store that is down.
        data_missing = {
            view: f"store {name}: {reason}"
            for name, s in self.stores.items()
            for view, reason in s.missing().items()
        }
        degraded += [f"view {view} is missing its data ({why})" for view, why in sorted(data_missing.items())]
        if self.registry_apply_error is not None:
            degraded.append(f"registry change not applied: {self.registry_apply_error}")
        health = self.registry.health()
        registry = {
            "kind": self.config.registry.kind,
            "version": self.engine.state.version,
            "connected": health.connected,
            "seconds_since_contact": round(min(health.seconds_since_contact, 1e9), 3),
        }
        # A registry outage does not make the server unready: it keeps serving the
        # last snapshot it has, and says how stale that may be.
        return Readiness(
            ready=not reasons,
            reasons=tuple(reasons),
            details={
                "status": "stopping" if reasons else "degraded" if degraded else "ok",
                "degraded": degraded,
                "registry_version": self.engine.state.version,
                "registry": registry,
                "stores": states,
                "data_missing": data_missing,
                # Which process answered: with --workers N each probe lands on any one.
                "worker": {"pid": os.getpid(), "slot": _worker_slot()},
            },
        )

    def start_background(self) -> None:
        for job, name in (
            (self._watch_registry, "registry-watch"),
            (self._apply_registry_changes, "registry-apply"),
            (self._report_registry_health, "registry-health"),
            (_flush_metrics, "metrics-flush"),
            (_flush_log_summaries, "log-summaries"),
        ):
            self.tasks.append(asyncio.create_task(supervised(name, job), name=name))
        if self.drift is not None:
            self.tasks.append(
                asyncio.create_task(supervised("drift-monitor", self.drift.run), name="drift-monitor")
            )
        if self.config.quality.consistency.views and _worker_slot() in (None, 0):
            checks = ConsistencySchedule(self.config, self.checked_stores(), lambda: self.engine.state)
            self.tasks.append(
                asyncio.create_task(supervised("consistency-check", checks.run), name="consistency-check")
            )

    def checked_stores(self) -> dict[str, OnlineSource]:
        """The stores a consistency check reads: past their row cache, since a check
        compares the store's own rows and its sample keys must neither fill the cache nor
        count in its hit rates."""
        return {n: uncached(s) for n, s in self.stores.items()}

    async def close(self) -> None:
        for t in self.tasks:
            t.cancel()
        for t in self.tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        try:
            if self.lineage is not None:
                await self.lineage.close()
            for s in self.stores.values():
                await s.close()
            await self.registry.close()
        finally:
            metrics.flush()  # the last joins of the drain, counted since the flush task's last run
            # the counts of rate-limited lines since their last summary (the log-summaries
            # task is gone, and would have written them only once their interval passed)
            logs.flush(force=True)

    # -- following the registry ------------------------------------------------------

    async def _watch_registry(self) -> None:
        """Flag every published change for the applier. The watch is re-armed if it
        breaks: a server that silently stopped following the registry would serve
        stale definitions forever."""
        while True:
            try:
                async for _ in self.registry.changes():
                    self.registry_dirty.set()
            except Exception:
                log.exception("registry watch failed; re-arming in 1 s")
            await asyncio.sleep(1.0)

    async def _apply_registry_changes(self) -> None:
        """Serve the registry's latest state, retrying until it is served.

        The watch has already moved past the event when applying it fails (etcd timing
        out between reads, a store that cannot prepare a new view), so a failure is
        retried with backoff rather than waiting for the next change, which may never
        come. Bursts of changes coalesce: each attempt reads the latest state."""
        backoff = _APPLY_RETRY_MIN_S
        # A (re)start reads the registry once: a run cut off while applying had cleared
        # the flag, and its change must not wait for an unrelated one.
        self.registry_dirty.set()
        while True:
            await self.registry_dirty.wait()
            self.registry_dirty.clear()
            try:
                await self.apply_registry_change()
            except Exception as e:
                metrics.REGISTRY_APPLY_FAILURES.inc()
                metrics.REGISTRY_APPLY_PENDING.set(1)
                self.registry_apply_error = f"{type(e).__name__}: {e}"[:200]
                what = "registry change not applied; still serving version %d, retrying in %.2f s"
                if isinstance(e, FeatureStoreError) and e.code is not Code.INTERNAL:
                    # An operator's state (no current, a malformed canary record, etcd
                    # down): one line a retry; a traceback would say nothing more.
                    log.warning(what + ": %s", self.engine.state.version, backoff, self.registry_apply_error)
                else:  # a bug: where it happened matters
                    log.exception(what, self.engine.state.version, backoff)
                self.registry_dirty.set()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, _APPLY_RETRY_MAX_S)
                continue
            backoff = _APPLY_RETRY_MIN_S
            self._applied()

    def _applied(self) -> None:
        """The registry's latest state is served: no change is pending any more."""
        if self.registry_apply_error is not None:
            log.info("registry change applied after earlier failures")
        self.registry_apply_error = None
        metrics.REGISTRY_APPLY_PENDING.set(0)

    async def apply_registry_change(self) -> None:
        """Serve the registry's latest state. A canary whose candidate cannot be served
        here is left out (its service is served from current), and so is a view's data
        pointer that is malformed (the view keeps the data version it is served at); both
        are then reported by raising (``not_served``), so the applier says so and tries
        them again."""
        reg = await load_state(self.registry)
        current = self.engine.state
        if reg.snapshot is None:
            # Current's pointer is gone (etcd rebuilt empty or restored without it, the
            # file registry's directory moved or unmounted): keep serving, but as a change
            # not applied (degraded, apply pending), never as "ok".
            raise FailedPrecondition(
                f"the registry has no current snapshot (still serving version {current.version}): "
                "re-apply the definitions or restore the registry"
            )
        unserved: dict[str, str] = dict(reg.unreadable_canaries)
        new = await serving_state(
            self.stores, reg, current, cache_dir(self.config.derived.cache_dir), unserved
        )
        if self.drift is not None:  # the stores prepared: a reloaded file can serve new rows
            self.drift.forget_references()  # at the same version (even when no state changes)
        problem = not_served(unserved, reg.malformed_data_versions, new.data_versions)
        if not new.same_as(current):
            await self._swap(new, current, complete=problem is None)
        # (every read: a watermark moves alone in an incremental run)
        FRESHNESS.update(served_snapshots(new), new.data_versions, reg.watermarks)
        if problem is not None:
            raise problem

    async def _swap(self, new: ServingState, current: ServingState, complete: bool = True) -> None:
        """``complete``: the registry's whole state is served (nothing left out: ``not_served``)."""
        self.engine.swap(new)
        if complete:  # /readyz stops reporting the change pending at once, not after an
            self._applied()  # in-process graph's write below (a join saw it served, /readyz not)
        tell_stores_served_versions(self.stores, new)
        if isinstance(self.engine.sampler, DriftSampler):
            self.engine.sampler.keep_only(served_layouts(new))
            self.engine.sampler.watch(served_views(new))  # new features' drift counters at 0
        canaries = ", ".join(f"{k} -> v{v.state.version} at {v.share:.0%}" for k, v in new.canaries.items())
        log.info(
            "now serving registry version %d%s", new.version, f" (canaries: {canaries})" if canaries else ""
        )
        if new.version != current.version:
            await self.definitions_to_graph(new.snapshot)

    async def definitions_to_graph(self, snapshot: RegistrySnapshot) -> None:
        """The lineage graph learns definitions from the snapshots servers swap to, so
        lineage exists before the first read, however the snapshot was published (the
        graph ignores a version older than one it holds: servers may lag). A graph
        server's write is handed to its background writer, off the applier's path: a hung
        graph held every registry change ~60 s (review s58 #2); the in-process graph is
        written here (it cannot hang)."""
        if self.lineage is None or self.lineage.graph is None:
            return
        if self.lineage.writer is not None:
            self.lineage.writer.offer(snapshot)
            return
        try:
            facts = await asyncio.to_thread(definition_facts, snapshot)  # ~20 ms for 12,000 features
            await self.lineage.graph.apply_definitions(facts)
        except Exception:
            log.exception("lineage graph: definitions of version %d not written", snapshot.version)

    async def _report_registry_health(self) -> None:
        while True:
            h = self.registry.health()
            metrics.REGISTRY_CONNECTED.set(1 if h.connected else 0)
            metrics.REGISTRY_STALENESS.set(min(h.seconds_since_contact, 1e9))
            await asyncio.sleep(1.0)


def _worker_slot() -> int | None:
    """The supervisor's slot of this worker (None when not supervised)."""
    slot = os.environ.get(WORKER_ENV)
    return int(slot) if slot is not None and slot.isdigit() else None


async def _flush_metrics() -> None:
    while True:
        metrics.flush()
        await asyncio.sleep(METRICS_FLUSH_SECONDS)


async def _flush_log_summaries() -> None:
    while True:
        await asyncio.sleep(1.0)
        logs.flush()


async def build_runtime(config: Config) -> Runtime:
    """Connect the registry and stores, serve the current snapshot, start following."""
    registry = make_registry(config)
    reg = await load_state(registry)
    if reg.snapshot is None:
        raise FailedPrecondition(
            f"the registry has no snapshot for project {config.project!r}: "
            "run `featurestore apply FILE` or start with --definitions FILE"
        )
    stores = make_serving_stores(config)
    for s in stores.values():
        await s.start()
    unserved: dict[str, str] = dict(reg.unreadable_canaries)
    state = await serving_state(stores, reg, None, cache_dir(config.derived.cache_dir), unserved)
    limits = Limits(max_rows=config.limits.max_rows, deadline_seconds=config.limits.deadline_ms / 1000)
    lineage = await build_lineage(config, stores)
    graph = lineage.graph if lineage is not None else None
    drift = build_drift(config.quality.drift, stores, GraphRecorder(graph) if graph is not None else None)
    engine = JoinEngine(
        stores, state, limits, lineage.emitter if lineage else None, drift[0] if drift else None
    )
    engine.swap(state)
    if drift:  # every feature's drift counters exist at 0 from the start (DriftSampler.watch)
        drift[0].watch(served_views(state))
    tell_stores_served_versions(stores, state)
    FRESHNESS.update(served_snapshots(state), state.data_versions, reg.watermarks)
    rt = Runtime(config, registry, stores, engine, lineage, drift[1] if drift else None)
    problem = not_served(unserved, reg.malformed_data_versions, state.data_versions)
    if problem is not None:  # current is served; the applier reports the rest and retries it
        log.error("%s", problem)
        rt.registry_dirty.set()
    await rt.definitions_to_graph(state.snapshot)
    rt.start_background()
    return rt


def served_snapshots(state: ServingState) -> list[RegistrySnapshot]:
    """Current's snapshot and each canary's candidate."""
    return [state.snapshot, *(c.state.snapshot for c in state.canaries.values())]


def served_layouts(state: ServingState) -> set[tuple[str, str]]:
    """(view, layout) of every view the state serves, canaries included."""
    return {(v.name, v.layout) for v in served_views(state)}


def served_views(state: ServingState) -> list[FeatureView]:
    """Every stored view the state serves, canaries included (a view of two snapshots twice)."""
    return [v for s in served_snapshots(state) for v in s.definitions.views.values()]


def tell_stores_served_versions(stores: Mapping[str, OnlineSource], state: ServingState) -> None:
    """Tell every store the data version of each of its views served now (current and
    canary snapshots), so stores that can lose data check those (``OnlineSource.serving``)."""
    by_store: dict[str, dict[str, int]] = {name: {} for name in stores}
    for snapshot in served_snapshots(state):
        for view in snapshot.definitions.views.values():
            if view.serving_store in by_store:
                by_store[view.serving_store][view.name] = state.data_versions.get(view.name, 0)
    for name, versions in by_store.items():
        stores[name].serving(versions)
