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
from lineage.graph.drift import DRIFT_SCHEMA, READ_DRIFT, WRITE_DRIFT, DriftRecord

log = logging.getLogger(__name__)

T = TypeVar("T")

# Worth retrying at once: the server is busy, a write conflicted, or the connection broke.
RETRYABLE = (neo.TransientError, neo.ConstraintError, neo.ServiceUnavailable, neo.SessionExpired)
# Our statements never name an entity by internal id, so "entity not found" can only mean
# a concurrent transaction moved or removed a record this one had already matched: ArcadeDB
# raises it when a racing writer commits between our MATCH and our SET. A conflict, then.
RACED_CODES = frozenset({"Neo.ClientError.Statement.EntityNotFound"})


def _retryable(e: Exception) -> bool:
    return isinstance(e, RETRYABLE) or (isinstance(e, neo.Neo4jError) and e.code in RACED_CODES)


# Not about the request either, but not going away within a retry loop: no connection
# can be had, the configuration or credentials are wrong, access is refused.
UNAVAILABLE = (neo.DriverError, neo.AuthError, neo.Forbidden, OSError)
# Codes about the server's state, not the statement: the database is missing (dropped
# for a restore, not created yet) or a cluster member cannot take writes. The same write
# passes once that is over. Not Neo.DatabaseError.*: ArcadeDB answers its default code,
# Neo.DatabaseError.General.UnknownError, for statements the data breaks too (an index
# key over a page, review s54 #1): the consumer then asks the probe (``ping``, a write).
SERVER_STATE_CODES = ("Neo.ClientError.Database.", "Neo.ClientError.Cluster.")


def server_state(e: Exception) -> bool:
    return isinstance(e, neo.Neo4jError) and (e.code or "").startswith(SERVER_STATE_CODES)


# How long one read (a GraphQL lookup: a hop of a walk, a node's edges, a search) may
# take, retries included. The lineage page's query answers in 7-25 ms on ArcadeDB
# (benchmarks/RESULTS.md, "Lineage page"), so a read still running after 5 s is a runaway
# (a graph grown without pruning, docs/lineage.md) or an overloaded server: the caller
# gets an error instead of a hang, and a walk of MAX_DEPTH hops ends within 25 s, inside
# the 30-60 s a browser or proxy waits. Sent to the server as the transaction timeout
# (Neo4j then stops the query; ArcadeDB ignores it) and enforced here as a deadline.
READ_TIMEOUT_SECONDS = 5.0


class BoltGraph(BoltWalks, BoltTopology):
    def __init__(
        self,
        uri: str,
        user: str,
        password: str,
        database: str | None = None,
        retries: int = 6,
        ca_file: str = "",
        read_timeout: float = READ_TIMEOUT_SECONDS,
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
        self._driver: AsyncDriver = AsyncGraphDatabase.driver(uri, auth=(user, password), **tls)
        self._database = database
        self._retries = retries
        self._read_timeout = read_timeout

    async def ping(self) -> None:
        """PROBE, a one-node write in the configured database: fails unless it takes writes
        now (missing, read-only, full, forbidden). 3 tries: consumers' probes may conflict."""
        at = int(time.time() * 1000)
        await self._retrying("probe", lambda session: _consume(session, PROBE, at=at), attempts=3)

    async def start(self) -> None:
        for statement in (*SCHEMA, *DRIFT_SCHEMA):
            await self._write(statement)

    async def close(self) -> None:
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
                if not _retryable(e):
                    if isinstance(e, UNAVAILABLE) or server_state(e):
                        raise GraphUnavailable(f"graph {what}: {_described(e)}") from e
                    raise
                if attempt == attempts - 1:
                    raise GraphUnavailable(
                        f"graph {what} failed {attempts} times, last: {_described(e)}"
                    ) from e
                log.debug("graph %s retry %d after %r", what, attempt + 1, e)
                # jittered, so writers that conflicted do not meet again in lockstep
                await asyncio.sleep(delay * (0.5 + random.random()))
                delay = min(delay * 2, 1.0)
        raise AssertionError("unreachable")

    async def _run(self, query: str, write: bool, **params: Any) -> list[dict[str, Any]]:
        timeout = None if write else self._read_timeout

        async def work(session: AsyncSession) -> list[dict[str, Any]]:
            result = await session.run(neo4j.Query(query, timeout=timeout), params)
            return [dict(r) async for r in result]

        if write:  # batches of the consumer: retried until they pass, never cut short
            return await self._retrying("write", work)
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

        # Racing appliers conflict by design: give the loser room to retry.
        return await self._retrying("definitions write", work, attempts=max(self._retries, 10))

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

    async def events(
        self, feature_id: str, since_ms: int | None, until_ms: int | None, limit: int
    ) -> list[LineageEvent]:
        rows = await self._read(
            "MATCH (e:LineageEvent) WHERE e.feature_id = $id AND ($since IS NULL OR e.ts_ms >= $since)"
            " AND ($until IS NULL OR e.ts_ms < $until)"
            " RETURN e.feature_id AS feature_id, e.feature_version AS feature_version, e.source_table AS source_table,"
            " e.timestamp AS timestamp, e.upstream_deps AS upstream_deps, e.registry_version AS registry_version,"
            " e.served_count AS served_count, e.trace_ids AS trace_ids, e.service AS service"
            " ORDER BY e.ts_ms DESC, e.service DESC LIMIT $limit",  # the time, not its text
            id=feature_id,
            since=since_ms,
            until=until_ms,
            limit=limit,
        )
        out = [
            LineageEvent(
                feature_id=r["feature_id"],
                feature_version=int(r["feature_version"]),
                source_table=r["source_table"],
                timestamp=r["timestamp"],
                upstream_deps=list(r["upstream_deps"] or []),
                registry_version=int(r["registry_version"]),
                served_count=int(r["served_count"]),
                trace_ids=list(r["trace_ids"] or []),
                service=r["service"],
            )
            for r in rows
        ]
        out.reverse()
        return out

    async def add_drift(self, records: Sequence[DriftRecord]) -> None:
        if records:
            await self._write(WRITE_DRIFT, rows=[r.row() for r in records])

    async def drift(
        self, feature_id: str, since_ms: int | None, until_ms: int | None, limit: int
    ) -> list[DriftRecord]:
        rows = await self._read(READ_DRIFT, id=feature_id, since=since_ms, until=until_ms, limit=limit)
        return [DriftRecord.from_row(r) for r in reversed(rows)]


async def _consume(session: AsyncSession, query: str, **params: Any) -> None:
    result = await session.run(query, params)
    await result.consume()


def _described(e: Exception) -> str:
    """An error with its code: a driver error's repr hides it (``ClientError()``)."""
    if isinstance(e, neo.Neo4jError) and e.code:
        return f"{type(e).__name__} {e.code}: {e.message}"
    return repr(e)
