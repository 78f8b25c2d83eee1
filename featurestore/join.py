"""The join engine: plan -> dedupe keys -> fan out per store -> merge -> statuses.

One request reads each online store once, with every view it serves (so Redis can
pipeline them), all stores concurrently under one deadline. A store that fails or
misses the deadline turns its views' values UNAVAILABLE; the other views still
answer. Values that are not PRESENT are always null, whatever the store returned.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

import numpy as np
from opentelemetry.trace import Span

from featurestore import metrics, tracing
from featurestore.deadlines import Deadlines
from featurestore.derived.request import note_undeclared
from featurestore.errors import DeadlineExceeded, Unavailable
from featurestore.keys import dedupe, validate_entities, view_keys
from featurestore.logs import RepeatLimitedLog
from featurestore.merge import Repeated, count_values, distinct_keys, merge
from featurestore.model import DType
from featurestore.outcomes import ViewOutcome as ViewOutcome  # re-exported: codecs import it from here
from featurestore.plan import JoinPlan, ServingState, canary_route, entity_clash
from featurestore.sources.base import EntityKey, LateAnswers, OnlineSource, ViewQuery, ViewRead
from featurestore.streaming.tiles import too_many_keys

log = logging.getLogger(__name__)
# A store outage fails the reads of every request: one line per kind of failure (store,
# view, error type) at once, then a count every 10 s (featurestore/logs.py). The
# failure metrics count every one.
_failures_log = RepeatLimitedLog(log)


# Per-request records are NamedTuples: as immutable as frozen dataclasses, but built
# several times faster (a frozen dataclass sets each field through object.__setattr__),
# and a batch-1 join builds about twenty of them.
class JoinRequest(NamedTuple):
    entities: Mapping[str, Sequence[Any]]
    features: tuple[str, ...] = ()
    feature_service: str | None = None
    full_feature_names: bool = False
    request_data: Mapping[str, Sequence[Any]] | None = None  # fields derived features read


@dataclass(frozen=True, slots=True)
class Limits:
    max_rows: int = 10_000
    deadline_seconds: float = 0.5


class ResultColumn(NamedTuple):
    name: str
    dtype: DType
    # None where the status is not PRESENT; a derived float64 feature from
    # derived.evaluate.ARRAY_ROWS rows on: a float64 ndarray, NaN where null
    values: list[Any] | np.ndarray
    outcome: ViewOutcome | None  # None for entity columns (always PRESENT)


class JoinResult(NamedTuple):
    columns: list[ResultColumn]
    registry_version: int
    partial: bool
    rows: int
    plan: JoinPlan


class ServedRecorder(Protocol):
    """Told about every successful join (lineage); must return at once."""

    def record(self, plan: JoinPlan, state: ServingState, rows: int, span: Any) -> None: ...


class ValueSampler(Protocol):
    """Drift sampling (quality/sampler.py). ``due`` is asked once per join and must return
    at once; a join it is due for hands ``take`` its stored columns and each view's
    outcome over the view's distinct keys (a key repeated over rows counts once)."""

    def due(self) -> bool: ...

    def take(
        self,
        state: ServingState,
        plan: JoinPlan,
        gathered: Sequence[Sequence[Sequence[Any]]],
        outcomes: Sequence[ViewOutcome] | None = None,
    ) -> None: ...


def _served_versions(state: ServingState) -> set[str]:
    """The registry versions a state serves: current and its canaries' candidates."""
    return {str(state.version), *(str(route.state.version) for route in state.canaries.values())}


class JoinEngine:
    def __init__(
        self,
        stores: Mapping[str, OnlineSource],
        state: ServingState,
        limits: Limits,
        recorder: ServedRecorder | None = None,
        sampler: ValueSampler | None = None,
    ) -> None:
        self.stores = dict(stores)
        # Stores that answer part of a read given up on at the deadline (the row cache):
        # found once, not by a Protocol check (3.5-7 µs) on each late read while one hangs.
        self._late_answers: dict[str, LateAnswers] = {
            name: s for name, s in self.stores.items() if isinstance(s, LateAnswers)
        }
        self.state = state
        self.limits = limits
        self.recorder = recorder
        self.sampler = sampler
        self.deadlines = Deadlines()
        # The registry versions whose service metrics are kept, set from the start: a worker
        # started after swaps elsewhere must leave the old versions out of its scrapes too.
        self._served = _served_versions(state)
        metrics.retire_registry_versions(self._served)

    def swap(self, state: ServingState) -> None:
        """Publish a new registry state; requests already running keep the old one."""
        self.state = state
        metrics.REGISTRY_VERSION.set(state.version)
        served = _served_versions(state)
        if served != self._served:
            self._served = served
            metrics.retire_registry_versions(served)

    async def join(self, req: JoinRequest, deadline: float, span: Span | None = None) -> JoinResult:
        """Serve one join. ``deadline`` is a ``time.monotonic()`` instant."""
        state = self.state
        service = req.feature_service
        if service and state.canaries:
            state = canary_route(state, service, req.entities)
        t0 = time.perf_counter()
        plan = state.plan(req.features, service, req.full_feature_names)
        entities = req.entities
        n = validate_entities(entities, plan.entities, state.definitions.entities, self.limits.max_rows)
        if not plan.names.isdisjoint(entities):
            raise entity_clash(plan, entities)
        derived = plan.derived
        request_cols = derived.check_request(req.request_data, n) if derived is not None else []
        if req.request_data:
            note_undeclared(req.request_data, state.definitions)
        metrics.join_rows.observe(n)

        # Dedupe once per distinct join-key tuple: views keyed alike share the work.
        keyed: dict[tuple[str, ...], tuple[list[EntityKey], list[int] | None]] = {}
        by_store: dict[str, list[tuple[int, ViewQuery]]] = {}
        for slot, vp in enumerate(plan.views):
            jk = vp.view.join_keys
            if jk not in keyed:
                keyed[jk] = dedupe(view_keys(jk, entities))
            unique = keyed[jk][0]
            if len(unique) > vp.max_keys:  # a stream view's tiles: refused before any store is read
                raise too_many_keys(vp.view, len(unique))
            version = state.data_versions.get(vp.view.name, 0)
            by_store.setdefault(vp.view.serving_store, []).append(
                (slot, ViewQuery(vp.view, unique, vp.features, version))
            )
            metrics.join_keys_read.observe(len(unique))

        reads = await self._fan_out(by_store, len(plan.views), deadline, span)

        now_us = time.time_ns() // 1000
        columns = [
            ResultColumn(name, _entity_dtype(state, name), list(col), None) for name, col in entities.items()
        ]
        outcomes: list[ViewOutcome] = []
        gathered: list[list[list[Any]]] = []
        partial = False
        sampler = self.sampler
        repeated: Repeated | None = [] if sampler is not None and sampler.due() else None
        for slot, vp in enumerate(plan.views):
            unique, inverse = keyed[vp.view.join_keys]
            outcome, cols = merge(vp, reads[slot], n, inverse, now_us, repeated, slot)
            partial |= outcome.unavailable
            # A view read only for derived features still counts its rows' statuses, one
            # per row: its staleness is what those features inherit (FeatureStoreViewExpired
            # watches the stored view; review s55).
            count_values(outcome, vp.served_columns or 1)
            outcomes.append(outcome)
            gathered.append(cols)
        if sampler is not None and repeated is not None:  # one value per key read, not per row
            sampler.take(state, plan, *distinct_keys(gathered, outcomes, repeated))
        if derived is not None:  # appends one slot per derived output (plan.outputs point past the views)
            derived.run(request_cols, outcomes, gathered, n, span)
        columns.extend(
            ResultColumn(
                out.name, out.dtype, gathered[out.view_slot][out.column_slot], outcomes[out.view_slot]
            )
            for out in plan.outputs
        )
        if service:
            served = str(state.version)
            metrics.service_requests(service, served).inc()
            metrics.service_duration(service, served).observe(time.perf_counter() - t0)
        if self.recorder is not None:
            self.recorder.record(plan, state, n, span)
        return JoinResult(columns, state.version, partial, n, plan)

    async def _fan_out(
        self,
        by_store: dict[str, list[tuple[int, ViewQuery]]],
        n_views: int,
        deadline: float,
        span: Span | None,
    ) -> list[ViewRead | BaseException]:
        reads: list[ViewRead | BaseException] = [Unavailable("not read")] * n_views
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise DeadlineExceeded("the request deadline passed before any store was read")
        if not by_store:  # derived features of request fields only: checked, nothing to read
            return reads
        if len(by_store) == 1:
            # The common case needs no task: await the one store under the deadline,
            # which cancels the read when it comes (stores must be cancellable; see
            # OnlineSource.read).
            name, items = next(iter(by_store.items()))
            try:
                with self.deadlines.guard(deadline):  # no loop timer per request: deadlines.py
                    results = await self._read_store(name, items, span)
            except TimeoutError:
                results = self._late(name, [q for _, q in items])
            for (slot, _), r in zip(items, results, strict=True):
                reads[slot] = r
            return reads
        # Several stores: read them concurrently; the deadline abandons the late ones.
        tasks = {
            asyncio.ensure_future(self._read_store(name, items, span)): (name, items)
            for name, items in by_store.items()
        }
        try:
            done, pending = await asyncio.wait(tasks, timeout=remaining)
        except BaseException:
            # The request itself was cancelled (client gone, server stopping): its
            # reads must not keep connections and threads busy for nobody.
            for task in tasks:
                task.cancel()
                task.add_done_callback(_discard_result)
            raise
        for task in pending:
            task.cancel()
            task.add_done_callback(_discard_result)
            name, items = tasks[task]
            for (slot, _), r in zip(items, self._late(name, [q for _, q in items]), strict=True):
                reads[slot] = r
        for task in done:
            _, items = tasks[task]
            for (slot, _), r in zip(items, task.result(), strict=True):
                reads[slot] = r
        return reads

    async def _read_store(
        self,
        store_name: str,
        items: list[tuple[int, ViewQuery]],
        span: Span | None,
    ) -> list[ViewRead | BaseException]:
        queries = [q for _, q in items]
        store = self.stores.get(store_name)
        if store is None:
            err = Unavailable(f"online store {store_name!r} is not configured on this server")
            return self._failed(store_name, queries, err, "unconfigured")
        child = None
        if span is not None and span.is_recording():
            child = tracing.tracer.start_span(
                f"read {store_name}",
                context=tracing.child_context(span),
                attributes={
                    "featurestore.store": store_name,
                    "featurestore.views": [q.view.name for q in queries],
                },
            )
        t0 = time.perf_counter()
        try:
            results = await store.read(queries)
        except Exception as e:  # a store must never fail the request
            _failures_log.log((store_name, None, type(e)), "store %s read failed: %r", store_name, e)
            if child is not None:
                tracing.record_error(child, e, server_fault=True)
            return self._failed(store_name, queries, e, "error")
        except asyncio.CancelledError as e:  # the deadline (or the client) gave up on it
            cut = time.perf_counter() - t0  # what the read took until then: a paused store shows
            for q in queries:
                metrics.view_read_duration(q.view.name, store_name).observe(cut)
            if child is not None:
                tracing.record_error(child, e, server_fault=True)
            raise
        finally:
            if child is not None:
                child.end()
        elapsed = time.perf_counter() - t0
        for q, r in zip(queries, results, strict=True):
            if not isinstance(r, BaseException):
                metrics.view_read_duration(q.view.name, store_name).observe(elapsed)
            else:  # counted as a failure, not timed: a read the open circuit refuses takes ~1 µs
                _failures_log.log(
                    (store_name, q.view.name, type(r)),
                    "view %s read failed on store %s: %r",
                    q.view.name,
                    store_name,
                    r,
                )
                metrics.view_read_failures(q.view.name, store_name, "error").inc()
        return results

    def _failed(
        self, store_name: str, queries: list[ViewQuery], err: BaseException, reason: str
    ) -> list[ViewRead | BaseException]:
        for q in queries:
            metrics.view_read_failures(q.view.name, store_name, reason).inc()
        return [err] * len(queries)

    def _late(self, store_name: str, queries: list[ViewQuery]) -> list[ViewRead | BaseException]:
        """A store's read given up on at the deadline: its views UNAVAILABLE, but for what
        the store can answer without reading (the row cache's keys while Redis hangs,
        ``LateAnswers``): a store that hangs loses no more than one that fails."""
        late = DeadlineExceeded(f"store {store_name!r} missed the deadline")
        failed = self._failed(store_name, queries, late, "deadline")
        store = self._late_answers.get(store_name)
        if store is None:
            return failed
        try:
            return store.answer_late(queries, late)
        except Exception:  # a bug there must not fail the request: the views stay UNAVAILABLE
            log.exception("store %s: answering from what it holds after the deadline failed", store_name)
            return failed


def _discard_result(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()  # retrieved, so asyncio does not log it as never retrieved


def _entity_dtype(state: ServingState, name: str) -> DType:
    return state.definitions.entities[name].dtype
