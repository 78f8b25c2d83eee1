"""What a serving process writes into a lineage graph server (``lineage.graph: bolt``),
in the background: its schema, then the definitions of the snapshots it serves.

Nothing that serves waits for it. ``serve`` awaited the schema at start and the registry
applier awaited each snapshot's definitions, so a graph that was down stopped a start
(exit 2 in 3 s), one that hung held it 61 s (past the 60 s startupProbe), and each
registry change published during a hang was served about 60 s late while /readyz said
``ok`` (review s58 #1, #2). Now:

* the schema is created by the ``lineage-graph-writer`` task, retried with backoff
  (tenacity, 1 s doubling to 30 s, as the consumer waits at its start) until it is;
* ``offer(snapshot)`` only keeps the snapshot: the task writes the newest one offered
  (an older one still waiting is dropped: the graph keeps the newest version anyway),
  within ``DEADLINE_SECONDS``, and a failure is logged, counted
  (``featurestore_lineage_definitions_writes_total{outcome="failed"}``) and retried
  with the same backoff, with whichever snapshot is newest by then;
* ``featurestore_lineage_graph_up{client="server"}`` is 0 from the start until the
  schema is created, then says whether the last write passed.

The in-process graph (``lineage.graph: memory``) is written inline: it cannot be down.

A job (``materialize``, ``stream run``) that writes its run reports straight into a graph
server does so through ``GraphRuns``, which creates the schema with the first report,
not before the job: a graph that was down failed the job before it loaded anything
(review s58 #3); now the report is what fails, logged and counted by ``RunRecorder``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, wait_exponential

from featurestore.background import supervised
from featurestore.definitions.snapshot import RegistrySnapshot
from lineage import metrics
from lineage.graph.base import GraphUnavailable, LineageGraph, definition_facts
from lineage.runs import JobRunEvent

log = logging.getLogger("featurestore")

# The definitions write's own deadline on Bolt (lineage/graph/bolt.py: a 10,000-feature
# snapshot took 2-10 minutes; three times the slowest). A server that takes the
# connection and stops answering fails it sooner, at the driver's 60 s wait for a
# connection from the pool; nothing serves behind it either way.
DEADLINE_SECONDS = 1800.0
# As the lineage consumer waits for its graph at start (featurestore/cli/lineage.py).
RETRY_FIRST_SECONDS = 1.0
RETRY_MAX_SECONDS = 30.0


class GraphWriter:
    """The background writer of one serving process's lineage graph server."""

    def __init__(
        self,
        graph: LineageGraph,
        deadline: float = DEADLINE_SECONDS,
        retry_first: float = RETRY_FIRST_SECONDS,
        retry_max: float = RETRY_MAX_SECONDS,
    ) -> None:
        self.graph = graph
        self.deadline = deadline
        self.wait = wait_exponential(multiplier=retry_first, min=retry_first, max=retry_max)
        self.schema_created = False
        self.written_version = 0  # the newest snapshot this process wrote (0: none yet)
        self._newest: RegistrySnapshot | None = None  # offered, not written yet
        self._offered = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._up = metrics.GRAPH_UP.labels("server")
        for outcome in ("written", "failed"):
            metrics.DEFINITIONS_WRITES.labels(outcome)

    def start(self) -> None:
        self._up.set(0)  # until the schema is created
        self._task = asyncio.create_task(
            supervised("lineage-graph-writer", self._run), name="lineage-graph-writer"
        )

    def offer(self, snapshot: RegistrySnapshot) -> None:
        """Write ``snapshot``'s definitions soon, instead of any snapshot still waiting."""
        self._newest = snapshot
        self._offered.set()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        if not self.schema_created:
            await self._retrying("schema", self._create_schema)
        while True:
            await self._offered.wait()
            await self._retrying("definitions", self._write_newest)

    async def _retrying(self, what: str, attempt_once: Callable[[], Awaitable[None]]) -> None:
        retrying = AsyncRetrying(
            wait=self.wait,
            retry=retry_if_exception_type(Exception),
            before_sleep=lambda state: self._failed(what, state),
            reraise=True,
        )
        await retrying(attempt_once)  # retried until it passes: no stop

    async def _create_schema(self) -> None:
        async with asyncio.timeout(self.deadline):
            await self.graph.start()
        self.schema_created = True
        self._up.set(1)
        log.info("lineage graph: schema created")

    async def _write_newest(self) -> None:
        self._offered.clear()
        snapshot = self._newest
        if snapshot is None:
            return
        facts = await asyncio.to_thread(definition_facts, snapshot)  # ~20 ms for 12,000 features
        async with asyncio.timeout(self.deadline):
            await self.graph.apply_definitions(facts)
        if self._newest is snapshot:
            self._newest = None
        self.written_version = max(self.written_version, snapshot.version)
        metrics.DEFINITIONS_WRITES.labels("written").inc()
        self._up.set(1)

    def _failed(self, what: str, state: RetryCallState) -> None:
        failure = state.outcome.exception() if state.outcome is not None else None
        delay = state.next_action.sleep if state.next_action is not None else 0.0
        self._up.set(0)
        if what == "definitions":
            metrics.DEFINITIONS_WRITES.labels("failed").inc()
            newest = self._newest  # what the retry writes (a newer one offered since, if any)
            what = f"definitions of version {newest.version if newest else '?'}"
        if isinstance(failure, (GraphUnavailable, TimeoutError)):  # the graph's state: one line
            reason = str(failure) or f"no answer within {self.deadline:g} s"
            log.warning("lineage graph: %s not written (%s); retrying in %.0f s", what, reason, delay)
        else:  # a statement refused, a bug: where it happened matters
            log.error("lineage graph: %s not written; retrying in %.0f s", what, delay, exc_info=failure)


class GraphRuns:
    """A job's run sink into a graph server: the schema first (until it is created, with
    each report), then the report. Raises what the graph raises: ``RunRecorder`` logs and
    counts it, and the job goes on."""

    def __init__(self, graph: LineageGraph) -> None:
        self.graph = graph
        self.schema_created = False

    async def send_runs(self, runs: Sequence[JobRunEvent]) -> None:
        if not self.schema_created:
            await self.graph.start()
            self.schema_created = True
        await self.graph.write_runs(runs)
