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
  graph answers, then says whether its last read or write (GraphQL's, this task's) passed;
  a graph found unavailable is probed (``ping``, with the same backoff) until it answers.

The in-process graph (``lineage.graph: memory``) is written inline: it cannot be down.

A job (``materialize``, ``stream run``) that writes its run reports straight into a graph
server does so through ``GraphRuns``, which creates the schema with the first report,
not before the job: a graph that was down failed the job before it loaded anything
(review s58 #3); now the report is what fails, logged and counted by ``RunRecorder``,
within ``REPORT_DEADLINE_SECONDS``, and the reports after a failed one skip the graph.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
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
# A job's run report, and the schema with its first one: a JobRun node with its edges
# writes in 0.15 s and the schema (16 statements) in 0.13 s on a fresh ArcadeDB here, a
# consumer's batch in 0.1-0.4 s (docs/lineage.md); 5 s, fifteen times both, is a graph in
# trouble, and bounds what one report can add to a job.
REPORT_DEADLINE_SECONDS = 5.0


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
        self._offered = asyncio.Event()  # a snapshot offered, or the graph found unavailable
        self._unanswered = False  # a read or write found it unavailable: probe until it answers
        self._task: asyncio.Task[None] | None = None
        self._up = metrics.GRAPH_UP.labels("server")
        for outcome in ("written", "failed"):
            metrics.DEFINITIONS_WRITES.labels(outcome)

    def start(self) -> None:
        self._up.set(0)  # until the graph answers (the schema, a read)
        self._task = asyncio.create_task(
            supervised("lineage-graph-writer", self._run), name="lineage-graph-writer"
        )

    def offer(self, snapshot: RegistrySnapshot) -> None:
        """Write ``snapshot``'s definitions soon, instead of any snapshot still waiting."""
        self._newest = snapshot
        self._offered.set()

    def answered(self, up: bool) -> None:
        """What one of the graph's reads or writes found (``BoltGraph.on_answer``): the gauge
        follows it. While GraphQL answered UNAVAILABLE it said 1, from the last definitions
        write (review s58 round 2b #3); a graph found unavailable is probed until it answers,
        so the gauge does not stay 0 after it is back with no read asking."""
        self._up.set(1 if up else 0)
        self._unanswered = not up
        if not up:
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
            self._offered.clear()
            if self._newest is not None:
                await self._retrying("definitions", self._write_newest)
            elif self._unanswered:
                await self._retrying("probe", self._probe)

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
        self.answered(True)
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
        self.answered(True)

    async def _probe(self) -> None:
        await self.graph.ping()  # within its own 5 s (lineage/graph/bolt.py)
        self.answered(True)

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
            if what == "probe":
                log.warning("lineage graph: not answering (%s); probing again in %.0f s", reason, delay)
                return
            log.warning("lineage graph: %s not written (%s); retrying in %.0f s", what, reason, delay)
        else:  # a statement refused, a bug: where it happened matters
            log.error("lineage graph: %s not written; retrying in %.0f s", what, delay, exc_info=failure)


class GraphRuns:
    """A job's run sink into a graph server: the schema first (until it is created, with
    each report), then the report, within ``deadline``. Raises what the graph raises:
    ``RunRecorder`` logs and counts it, and the job goes on.

    A report that finds the graph unavailable, or gets no answer within the deadline,
    makes the reports after it skip the graph (raising at once) for ``skip_seconds``
    (None: the rest of this job's run). Each report of a hung graph waited 60 s: a
    2-view ``materialize`` took 242 s for 1 s of work and ``stream run`` exited 115 s
    after SIGTERM, past its 30 s grace (review s58 round 2b #1)."""

    def __init__(
        self,
        graph: LineageGraph,
        deadline: float = REPORT_DEADLINE_SECONDS,
        skip_seconds: float | None = None,
    ) -> None:
        self.graph = graph
        self.deadline = deadline
        self.skip_seconds = skip_seconds
        self.schema_created = False
        self._skip_until = 0.0  # monotonic; inf: for the rest of the run
        self._why = ""

    async def send_runs(self, runs: Sequence[JobRunEvent]) -> None:
        if time.monotonic() < self._skip_until:
            raise GraphUnavailable(f"not sent: {self._why}")
        try:
            async with asyncio.timeout(self.deadline):
                if not self.schema_created:
                    await self.graph.start()
                    self.schema_created = True
                await self.graph.write_runs(runs)
        except TimeoutError:
            raise self._skip(f"the graph did not answer a run report within {self.deadline:g} s") from None
        except GraphUnavailable as e:
            raise self._skip(str(e)) from e

    def _skip(self, why: str) -> GraphUnavailable:
        forever = self.skip_seconds is None
        self._skip_until = math.inf if forever else time.monotonic() + (self.skip_seconds or 0.0)
        later = "this run" if forever else f"the next {self.skip_seconds:g} s"
        self._why = f"{why} (the graph is skipped by the reports of {later})"
        return GraphUnavailable(self._why)
