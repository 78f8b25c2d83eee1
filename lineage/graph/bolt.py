"""Lineage graph on Neo4j (or any Bolt + Cypher server) with the async neo4j driver.

Writes are idempotent MERGEs in UNWIND batches; transient errors (including the
ConstraintError some servers raise for concurrent MERGEs on one key, and the
EntityNotFound ArcadeDB raises when a racing commit moves a matched record) are retried
with backoff, and what keeps failing, or cannot reach the server at all, is raised as
GraphUnavailable. A snapshot's definitions are written in one transaction that first
claims the project's AppliedDefinitions node (see ``apply_definitions``). Constraints
and indexes are created at start.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import neo4j
from neo4j import AsyncDriver, AsyncGraphDatabase, AsyncSession, AsyncTransaction
from neo4j import exceptions as neo

from lineage.events import LineageEvent
from lineage.graph.base import (
    MAX_SERVED,
    DefinitionFacts,
    FeatureInfo,
    GraphUnavailable,
    ServedBy,
    TableRef,
    event_key,
    event_time_ms,
)
from lineage.graph.bolt_errors import UNAVAILABLE, described, retryable, server_state
from lineage.graph.bolt_history import BoltHistory
from lineage.graph.bolt_session import consume, forget, transaction, within
from lineage.graph.bolt_topology import BoltTopology
from lineage.graph.bolt_walk import BoltWalks
from lineage.graph.cypher import (
    APPLIED_VERSION,
    APPLY_NODES,
    CLAIM,
    CLOSE_EDGES,
    DESCRIBE,
    EDGE_KINDS,
    LIVE,
    MARK_APPLIED,
    OPEN_EDGE,
    PROBE,
    SCHEMA,
    WRITE_EVENTS,
)
from lineage.graph.drift import DRIFT_SCHEMA

log = logging.getLogger(__name__)

T = TypeVar("T")

# How long one read (a GraphQL lookup: a hop of a walk, a node's edges, a search) may
# take, retries included. The lineage page's query answers in 7-25 ms on ArcadeDB
# (benchmarks/RESULTS.md, "Lineage page"), so a read still running after 5 s is a runaway
# (a graph grown without pruning, docs/lineage.md) or an overloaded server: the caller
# gets an error instead of a hang, and a walk of MAX_DEPTH hops ends within 25 s, inside
# the 30-60 s a browser or proxy waits. Sent to the server as the transaction timeout
# (Neo4j then stops the query; ArcadeDB ignores it) and enforced here as a deadline.
READ_TIMEOUT_SECONDS = 5.0
# Writes and the probe have deadlines too (review s56 #2): a server that takes the
# connection and stops answering (a hung JVM, a path that drops packets) held a write,
# the probe and SIGTERM forever, with graph_up at 1. A consumer's batch (500 events)
# writes in 0.1-0.4 s (docs/lineage.md: event-to-graph p99 0.40 s), so 60 s is a server in
# trouble; a probe is one node, 5 s is generous. Expiry is GraphUnavailable: the consumer
# waits and writes the same batch again (every write is idempotent, so an ambiguous
# timeout is safe to repeat). A snapshot's definitions took 2-10 minutes on the generated
# 10,000-feature graph (benchmarks/lineage_page.py): three times the slowest.
WRITE_TIMEOUT_SECONDS = 60.0
PROBE_TIMEOUT_SECONDS = 5.0
DEFINITIONS_TIMEOUT_SECONDS = 1800.0
# The driver's own: a TCP connect, and a check (RESET) of a pooled connection idle this
# long before it is used again (a half-open connection after a network drop fails it).
CONNECT_TIMEOUT_SECONDS = 5.0
LIVENESS_CHECK_SECONDS = 30.0


class BoltGraph(BoltWalks, BoltTopology, BoltHistory):
    def __init__(
        self,
        uri: str,
        user: str,
        password: str,
        database: str | None = None,
        retries: int = 6,
        ca_file: str = "",
        read_timeout: float = READ_TIMEOUT_SECONDS,
        write_timeout: float = WRITE_TIMEOUT_SECONDS,
        probe_timeout: float = PROBE_TIMEOUT_SECONDS,
    ) -> None:
        """TLS: a ``bolt+s://`` or ``neo4j+s://`` uri (the system's CAs), or ``ca_file``
        with a ``bolt://`` or ``neo4j://`` uri (that CA only)."""
        tls: dict[str, Any] = {}
        if ca_file:
            if "+s" in uri.split("://", 1)[0]:
                raise ValueError(
                    "lineage.bolt.ca_file goes with a bolt:// or neo4j:// uri (the driver's rule)"
                )
            tls = {"encrypted": True, "trusted_certificates": neo4j.TrustCustomCAs(ca_file)}
        self._driver: AsyncDriver = AsyncGraphDatabase.driver(
            uri,
            auth=(user, password),
            connection_timeout=CONNECT_TIMEOUT_SECONDS,
            liveness_check_timeout=LIVENESS_CHECK_SECONDS,
            **tls,
        )
        self._database = database
        self._retries = retries
        self._read_timeout = read_timeout
        self._write_timeout = write_timeout
        self._probe_timeout = probe_timeout
        self._unfinished: asyncio.Future[Any] | None = None  # a write cut short, still sent
        # Told what each read and write (not ``ping``, ``apply_definitions``) found: True it
        # passed, False the graph unavailable. A server's graph_up follows it (graph_writer.py).
        self.on_answer: Callable[[bool], None] | None = None

    async def ping(self) -> None:
        """PROBE, a one-node write in the configured database: fails unless it takes writes
        now (missing, read-only, full, forbidden). 3 tries: consumers' probes may conflict;
        all of them within the probe's deadline (GraphUnavailable after it)."""
        at = int(time.time() * 1000)
        probe = self._retrying("probe", lambda session: consume(session, PROBE, at=at), attempts=3)
        await within("probe", self._probe_timeout, probe)

    async def start(self) -> None:
        for statement in (*SCHEMA, *DRIFT_SCHEMA):
            await self._write(statement)

    async def close(self) -> None:
        if self._unfinished is not None:
            self._unfinished.cancel()  # a write cut short that still waits: nothing will
        await self._driver.close()

    async def _retrying(
        self, what: str, work: Callable[[AsyncSession], Awaitable[T]], attempts: int | None = None
    ) -> T:
        """Run ``work`` in a fresh session; retry what may pass on a second try, and
        raise GraphUnavailable for what is the server's state rather than the request's."""
        attempts = attempts or self._retries
        delay = 0.05
        for attempt in range(attempts):
            try:
                async with self._driver.session(database=self._database) as session:
                    return await work(session)
            except (neo.Neo4jError, *UNAVAILABLE) as e:
                if not retryable(e):
                    if isinstance(e, UNAVAILABLE) or server_state(e):
                        raise GraphUnavailable(f"graph {what}: {described(e)}") from e
                    raise
                if attempt == attempts - 1:
                    raise GraphUnavailable(
                        f"graph {what} failed {attempts} times, last: {described(e)}"
                    ) from e
                log.debug("graph %s retry %d after %r", what, attempt + 1, e)
                # jittered, so writers that conflicted do not meet again in lockstep
                await asyncio.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, 1.0)
        raise AssertionError("unreachable")

    async def _run(self, query: str, write: bool, **params: Any) -> list[dict[str, Any]]:
        try:
            rows = await self._statement(query, write, **params)
        except GraphUnavailable:
            if self.on_answer is not None:
                self.on_answer(False)
            raise
        if self.on_answer is not None:
            self.on_answer(True)
        return rows

    async def _statement(self, query: str, write: bool, **params: Any) -> list[dict[str, Any]]:
        timeout = self._write_timeout if write else self._read_timeout  # Neo4j stops it then

        async def work(session: AsyncSession) -> list[dict[str, Any]]:
            if write:
                return await transaction(session, query, params, timeout)
            result = await session.run(neo4j.Query(query, timeout=timeout), params)
            return [dict(r) async for r in result]

        if write:  # batches of the consumer: retried within the write's deadline
            return await self._one_write_at_a_time(lambda: self._retrying("write", work))
        try:
            async with asyncio.timeout(self._read_timeout):
                return await self._retrying("read", work)
        except TimeoutError:
            pass  # the deadline here (any server)
        except neo.Neo4jError as e:
            if "TransactionTimedOut" not in (e.code or ""):  # Neo4j stopped it at the timeout sent
                raise
        raise GraphUnavailable(
            f"graph read took longer than {self._read_timeout:g} s: the graph server is busy "
            "or the query reaches too much (ask for a smaller depth)"
        )

    async def _one_write_at_a_time(self, start: Callable[[], Awaitable[T]]) -> T:
        """``start()`` within the write's deadline, after a write cut short before it.

        A write cut by its deadline is shielded and goes on; the next write first waits
        for it (it may still commit: the retry then finds its events written). Every write
        is one transaction, so a write and its retry, or another consumer's, that do run
        side by side still count an event once (``bolt_session.transaction``). ``start`` is called
        only once the write is sent: a coroutine made before the wait, which can fail or
        be cancelled, was never awaited (review s56 r2 #4)."""
        if self._unfinished is not None and not self._unfinished.done():
            try:
                await asyncio.wait_for(asyncio.shield(self._unfinished), self._write_timeout)
            except TimeoutError:
                raise GraphUnavailable(
                    f"graph write: the write cut short before is still unanswered after another "
                    f"{self._write_timeout:g} s: the graph server is not answering"
                ) from None
            except Exception:
                pass  # it failed: the write below is the retry
        task = asyncio.ensure_future(start())
        try:
            return await within("write", self._write_timeout, asyncio.shield(task))
        except BaseException:
            if not task.done():
                self._unfinished = task
                task.add_done_callback(forget)
            raise

    async def _write(self, query: str, **params: Any) -> list[dict[str, Any]]:
        return await self._run(query, True, **params)

    async def _read(self, query: str, **params: Any) -> list[dict[str, Any]]:
        return await self._run(query, False, **params)

    # -- writes ----------------------------------------------------------------------

    async def apply_definitions(self, facts: DefinitionFacts) -> bool:
        """One transaction: claim the project's AppliedDefinitions node, compare versions,
        write nodes, open and close edges, record the version. A writer of an older
        version that races a newer one either finishes first (and is then superseded
        whole) or finds the newer version and writes nothing: never a mix."""
        wanted: dict[str, list[dict[str, str]]] = {
            "CONTAINS": [{"a": a, "b": b, "role": ""} for a, b in facts.contains],
            "USES": [{"a": a, "b": b, "role": ""} for a, b in facts.uses],
            "DERIVED_FROM": [{"a": a, "b": b, "role": ""} for a, b in facts.derived_from],
            "PRODUCED_BY": [{"a": a, "b": b, "role": role} for a, b, role in facts.produced_by],
        }
        features = [f.id for f in facts.features]
        owned = {
            "CONTAINS": list(facts.views),
            "USES": list(facts.services),
            "DERIVED_FROM": features,
            "PRODUCED_BY": features,
        }
        t = facts.valid_from_ms

        async def run(tx: Any, query: str, **params: Any) -> list[dict[str, Any]]:
            result = await tx.run(query, params)
            return [dict(r) async for r in result]

        async def apply(tx: AsyncTransaction) -> bool:
            await run(tx, CLAIM, project=facts.project)
            [row] = await run(tx, APPLIED_VERSION, project=facts.project)
            if int(row["version"]) >= facts.registry_version:
                return False
            await run(
                tx,
                APPLY_NODES,
                features=[
                    {
                        "id": f.id,
                        "view": f.view,
                        "dtype": f.dtype,
                        "version": f.version,
                        "owner": f.owner,
                        "description": f.description,
                    }
                    for f in facts.features
                ],
            )
            for kind, label in (("view", "FeatureView"), ("service", "FeatureService")):
                described = [
                    {"name": n, "owner": o, "description": d} for k, n, o, d in facts.described if k == kind
                ]
                if described:
                    await run(tx, DESCRIBE.format(label=label), nodes=described)
            for rel, edges in wanted.items():
                a_label, a_key, b_label, b_key = EDGE_KINDS[rel]
                names = {"a_label": a_label, "a_key": a_key, "b_label": b_label, "b_key": b_key, "rel": rel}
                if edges:
                    await run(tx, OPEN_EDGE.format(**names), edges=edges, t=t, project=facts.project)
                await run(
                    tx,
                    CLOSE_EDGES.format(**names),
                    keep=[[e["a"], e["b"]] for e in edges],
                    owned=owned[rel],
                    project=facts.project,
                    t=t,
                )
            await run(tx, MARK_APPLIED, project=facts.project, version=facts.registry_version)
            return True

        async def work(session: AsyncSession) -> bool:
            tx = await session.begin_transaction()
            try:
                applied = await apply(tx)
                if applied:
                    await tx.commit()
                else:
                    await tx.rollback()  # nothing to write: release the claim
                return applied
            finally:
                await tx.close()  # rolls back whatever did not commit

        applying = self._retrying("definitions write", work, attempts=max(self._retries, 10))  # racers retry
        return await within("definitions write", DEFINITIONS_TIMEOUT_SECONDS, applying)

    async def write_events(self, events: Sequence[LineageEvent]) -> None:
        if not events:
            return
        # One row per event: the server runs the UNWIND's MERGE for every row before the
        # SET clauses, so two copies of an event in one batch (a sink's resend after a
        # lost topic lands them side by side) both found their node fresh and counted
        # twice, where the in-process graph (and a replay in another batch) counts once.
        unique = list({event_key(e): e for e in reversed(events)}.values())[::-1]
        rows = [
            {
                "key": event_key(e),
                "view": e.feature_id.partition(":")[0],
                "props": {
                    "feature_id": e.feature_id,
                    "feature_version": e.feature_version,
                    "source_table": e.source_table,
                    "timestamp": e.timestamp,
                    "ts_ms": event_time_ms(e),
                    "upstream_deps": list(e.upstream_deps),
                    "registry_version": e.registry_version,
                    "served_count": e.served_count,
                    "trace_ids": list(e.trace_ids),
                    "service": e.service,
                },
            }
            for e in unique
        ]
        await self._write(WRITE_EVENTS, events=rows)

    # -- reads -----------------------------------------------------------------------

    async def feature(self, feature_id: str, as_of_ms: int | None = None) -> FeatureInfo | None:
        rows = await self._read(
            "MATCH (f:Feature {id: $id}) OPTIONAL MATCH (v:FeatureView)-[r:CONTAINS]->(f) WHERE "
            + LIVE.format(r="r")
            + " RETURN f.id AS id, f.view AS view, f.dtype AS dtype, f.version AS version, f.versions AS versions,"
            " f.owner AS owner, f.description AS description, count(v) AS live",
            id=feature_id,
            t=as_of_ms,
        )
        if not rows or (as_of_ms is not None and rows[0]["live"] == 0):
            return None
        r = rows[0]
        return FeatureInfo(
            r["id"],
            r["view"] or "",
            r["dtype"] or "",
            int(r["version"] or 0),
            tuple(sorted(r["versions"] or ())),
            r["owner"] or "",
            r["description"] or "",
        )

    async def produced_by(self, feature_id: str, as_of_ms: int | None = None) -> list[TableRef]:
        rows = await self._read(
            "MATCH (f:Feature {id: $id})-[r:PRODUCED_BY]->(t:Table) WHERE "
            + LIVE.format(r="r")
            + " RETURN t.name AS name, coalesce(r.role, '') AS role",
            id=feature_id,
            t=as_of_ms,
        )
        return sorted((TableRef(r["name"], r["role"]) for r in rows), key=lambda t: (t.role, t.name))

    async def served_by(
        self, feature_id: str, since_ms: int | None = None, limit: int = MAX_SERVED
    ) -> list[ServedBy]:
        rows = await self._read(
            "MATCH (f:Feature {id: $id})-[r:SERVED_BY]->(s:Server) WHERE $since IS NULL OR r.last_seen >= $since"
            " RETURN s.name AS s, r.count AS c, r.last_seen AS l ORDER BY l DESC, s LIMIT $limit",
            id=feature_id,
            since=since_ms,
            limit=limit,
        )
        return [ServedBy(r["s"], int(r["c"]), int(r["l"])) for r in rows]

    async def table_exists(self, name: str) -> bool:
        return bool(await self._read("MATCH (t:Table {name: $n}) RETURN t.name AS n", n=name))
