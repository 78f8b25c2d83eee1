"""The Bolt adapter's job runs, topology, search and changes (a mixin of BoltGraph, kept
apart so each module stays one noun): every statement is in lineage/graph/cypher.py
or built here from the label table of lineage/graph/topology.py."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from lineage.graph import nodes as describe
from lineage.graph.base import MAX_DEPTH, FeatureInfo
from lineage.graph.cypher import RUN_FIELDS, TOPOLOGY_LIVE, WRITE_PUBLISHED, WRITE_READS, WRITE_RUNS
from lineage.graph.topology import (
    EDGE_ENDS,
    LABELS,
    MAX_NEIGHBOURS,
    RECENT,
    SEARCHABLE,
    Change,
    GraphEdge,
    Incidence,
    Node,
    node_id,
    search_rank,
    split_id,
    steps,
)
from lineage.runs import DataVersion, JobRunEvent, time_ms


def _key(kind: str) -> str:
    return LABELS[kind][1]


def _arrow(kinds: list[str], outgoing: bool) -> str:
    return f"-[r:{'|'.join(kinds)}]->(b)" if outgoing else f"<-[r:{'|'.join(kinds)}]-(b)"


class BoltTopology:
    async def _read(self, query: str, **params: Any) -> list[dict[str, Any]]:
        raise NotImplementedError

    async def _write(self, query: str, **params: Any) -> list[dict[str, Any]]:
        raise NotImplementedError

    async def upstream(self, feature_id: str, depth: int, as_of_ms: int | None = None) -> list[str]:
        raise NotImplementedError

    async def write_runs(self, runs: Sequence[JobRunEvent]) -> None:
        for run in runs:
            describe.check(run)
        # one report per run: every row of the UNWIND sees the run as it was before the
        # statement, so [COMPLETE, START] of one run took the START as the first report
        runs = describe.fold(runs)
        if not runs:
            return
        rows = [
            {
                "id": r.run_id,
                "job": r.job,
                "view": r.view,
                "inputs": list(r.inputs),
                "outputs": list(r.outputs),
                "started_at": r.started_at,
                "started_ms": time_ms(r.started_at),
                "state": r.state,
                "ended_at": r.ended_at,
                "at_ms": time_ms(r.ended_at or r.started_at),
                "rows_read": r.rows_read,
                "rows_written": r.rows_written,
                "data_version": r.data_version.id if r.data_version else "",
                "error": r.error,
            }
            for r in runs
        ]
        await self._write(WRITE_RUNS, runs=rows)
        reads = [{"run": r.run_id, "table": t, "t": time_ms(r.started_at)} for r in runs for t in r.inputs]
        if reads:
            await self._write(WRITE_READS, reads=reads)
        published = [
            {
                "run": r.run_id,
                "id": dv.id,
                "view": dv.view,
                "version": dv.version,
                "rows": dv.rows,
                "published_at": dv.published_at,
                "t": time_ms(dv.published_at),
                "fingerprint": dv.fingerprint,
            }
            for r in runs
            if (dv := r.data_version) is not None
        ]
        if published:
            await self._write(WRITE_PUBLISHED, published=published)

    async def incident(self, node_ids: Sequence[str], as_of_ms: int | None, upstream: bool) -> Incidence:
        """One statement per hop: a UNION ALL of one match per node kind, edge kind and
        direction (a round trip costs more than the matches on a graph this size)."""
        by_kind: dict[str, list[str]] = {}
        for nid in node_ids:
            kind, name = split_id(nid)
            by_kind.setdefault(kind, []).append(name)
        parts: list[str] = []
        params: dict[str, Any] = {"t": as_of_ms}
        for kind, names in by_kind.items():
            label, key = LABELS[kind]
            params[f"n_{kind}"] = names
            for ek, outgoing in steps(kind, upstream):
                # UNWIND + a property match uses the key's index; `a.key IN $list` scanned
                # every node of the label on ArcadeDB (15 ms at 3,000 features, 1.7 ms so)
                match = f"UNWIND $n_{kind} AS x MATCH (a:{label} {{{key}: x}}){_arrow([ek], outgoing)}"
                parts.append(f"{match} WHERE {TOPOLOGY_LIVE} {_kept(ek, key, str(outgoing).lower())}")
        if not parts:
            return Incidence([])
        out: list[GraphEdge] = []
        totals: dict[tuple[str, str], int] = {}
        for row in await self._read(" UNION ALL ".join(parts), **params):
            ek = row["kind"]
            src, dst = EDGE_ENDS[ek]
            a, b = (row["a"], row["b"]) if row["out"] else (row["b"], row["a"])
            at = int(row["t"] or 0) if ek in describe.TIMED or ek == "SERVED_BY" else 0
            out.append(GraphEdge(node_id(src, a), node_id(dst, b), ek, at))
            here = node_id(src if row["out"] else dst, row["a"])
            totals[(here, ek)] = int(row["n"] or 0)
        return Incidence(out, totals)

    async def nodes(self, node_ids: Sequence[str]) -> list[Node]:
        """One statement for every kind asked (UNION ALL of an indexed match per kind)."""
        by_kind: dict[str, list[str]] = {}
        for nid in node_ids:
            kind, name = split_id(nid)
            by_kind.setdefault(kind, []).append(name)
        if not by_kind:
            return []
        parts = []
        for kind in by_kind:
            label, key = LABELS[kind]
            parts.append(
                f"UNWIND $n_{kind} AS x MATCH (n:{label} {{{key}: x}}) RETURN '{kind}' AS kind, properties(n) AS p"
            )
        rows = await self._read(" UNION ALL ".join(parts), **{f"n_{k}": v for k, v in by_kind.items()})
        return [_node(r["kind"], r["p"]) for r in rows]

    async def search(self, text: str, limit: int) -> list[Node]:
        ranked: list[tuple[tuple[int, str], str, str]] = []
        for kind in SEARCHABLE:
            label, key = LABELS[kind]
            # ranked (search_rank) before the LIMIT: cut first, an exact or prefix match
            # was lost among more than `limit` names that contain the text. A feature
            # also ranks by its own name (`short`: its id after `view:`).
            short = "substring(low, size(split(low, ':')[0]) + 1)" if kind == "feature" else "low"
            rows = await self._read(
                f"MATCH (n:{label}) WITH n.{key} AS n, toLower(n.{key}) AS low WHERE low CONTAINS $q"
                f" WITH n, low, {short} AS short RETURN n, CASE WHEN low = $q OR short = $q THEN 0"
                " WHEN low STARTS WITH $q OR short STARTS WITH $q THEN 1 ELSE 2 END AS rank"
                " ORDER BY rank, n LIMIT $limit",
                q=text.lower(),
                limit=limit,
            )
            ranked += [
                (rank, kind, r["n"]) for r in rows if (rank := search_rank(text, r["n"], kind)) is not None
            ]
        best = sorted(ranked)[:limit]
        found = {n.id: n for n in await self.nodes([node_id(kind, name) for _, kind, name in best])}
        return [found[i] for _, kind, name in best if (i := node_id(kind, name)) in found]

    async def changes(
        self, feature_id: str | None, table: str | None, since_ms: int | None, limit: int
    ) -> list[Change]:
        since = "($since IS NULL OR r.at_ms >= $since)"
        runs = f"OPTIONAL MATCH (r)-[:PUBLISHED]->(d:DataVersion) RETURN {RUN_FIELDS} ORDER BY r.at_ms DESC, r.id LIMIT $limit"
        if feature_id is not None:
            features = [feature_id, *await self.upstream(feature_id, MAX_DEPTH)]
            rows = await self._read(
                "UNWIND $ids AS x MATCH (f:Feature {id: x})-[p:PRODUCED_BY]->(t:Table) WHERE p.valid_to IS NULL"
                " AND coalesce(p.role, '') <> 'online' RETURN DISTINCT t.name AS n",
                ids=features,
            )
            # the runs of those views (JobRun.view is indexed) and those that read those
            # tables (their READ edges, from the indexed Table): no scan of every run
            rows = await self._read(
                f"UNWIND $views AS v MATCH (r:JobRun {{view: v}}) WHERE {since} {runs} UNION"
                f" UNWIND $tables AS x MATCH (:Table {{name: x}})<-[:READ]-(r:JobRun) WHERE {since} {runs}",
                views=sorted({f.partition(":")[0] for f in features}),
                tables=sorted(r["n"] for r in rows),
                since=since_ms,
                limit=limit,
            )
        else:  # a table's readers and writers: `outputs` has no edge, a scan of the runs
            rows = await self._read(
                f"MATCH (r:JobRun) WHERE ($table IN r.inputs OR $table IN r.outputs) AND {since} {runs}",
                table=table,
                since=since_ms,
                limit=limit,
            )
        found = {c.run_id: c for c in (describe.change(_run(r)) for r in rows)}
        return sorted(found.values(), key=lambda c: (-c.at_ms, c.run_id))[:limit]


def _kept(ek: str, key: str, flag: str) -> str:
    """The rest of one part of ``incident`` after its match of ``a -[r:ek]- b``: only what
    the walk keeps, picked by the server instead of sent to be dropped (runs and data
    versions pile up with time; a server has the thousands of features it served), as
    rows ``a kind out b t n`` with ``n`` the edges there are in all. The order is the walk's
    (topology._newest): the newest RECENT runs and data versions, the MAX_NEIGHBOURS most
    recently seen servers or features served, else by the other end's name."""
    if ek in describe.TIMED:
        time, keep = "coalesce(r.valid_from, 0)", RECENT
    elif ek == "SERVED_BY":
        time, keep = "r.last_seen", MAX_NEIGHBOURS
    else:
        time, keep = "0", MAX_NEIGHBOURS
    newest = "" if time == "0" else f"{time} DESC, "
    return (
        f"WITH a, r, b ORDER BY {newest}coalesce(b.id, b.name)"
        f" WITH a, collect(coalesce(b.id, b.name))[..{keep}] AS bs, collect({time})[..{keep}] AS ts,"
        f" count(*) AS n UNWIND range(0, size(bs) - 1) AS i"
        f" RETURN a.{key} AS a, '{ek}' AS kind, {flag} AS out, bs[i] AS b, ts[i] AS t, n AS n"
    )


def _node(kind: str, p: dict[str, Any]) -> Node:
    if kind == "feature":
        return describe.feature_node(_feature(p))
    if kind == "data_version":
        return describe.data_version_node(_data_version(p))
    if kind == "run":
        node = describe.run_node(_run({**p, "run_id": p["id"], "dv_view": None}))
        node.attributes["dataVersion"] = p.get("data_version") or ""
        return node
    return describe.named_node(kind, p["name"], p.get("owner") or "", p.get("description") or "")


def _feature(p: dict[str, Any]) -> FeatureInfo:
    return FeatureInfo(
        p["id"],
        p.get("view") or "",
        p.get("dtype") or "",
        int(p.get("version") or 0),
        tuple(sorted(p.get("versions") or ())),
        p.get("owner") or "",
        p.get("description") or "",
    )


def _data_version(p: dict[str, Any]) -> DataVersion:
    return DataVersion(
        view=p["view"],
        version=int(p["version"]),
        rows=int(p["rows"]),
        published_at=p["published_at"],
        fingerprint=p.get("fingerprint") or "",
    )


def _run(r: dict[str, Any]) -> JobRunEvent:
    dv = None
    if r.get("dv_view") is not None:
        dv = DataVersion(
            view=r["dv_view"],
            version=int(r["dv_version"]),
            rows=int(r["dv_rows"]),
            published_at=r["dv_published_at"],
            fingerprint=r["dv_fingerprint"] or "",
        )
    return JobRunEvent(
        job=r["job"],
        run_id=r["run_id"],
        state=r["state"],
        started_at=r["started_at"],
        ended_at=r["ended_at"] or "",
        inputs=list(r["inputs"] or []),
        outputs=list(r["outputs"] or []),
        view=r["view"] or "",
        rows_read=int(r["rows_read"] or 0),
        rows_written=int(r["rows_written"] or 0),
        data_version=dv,
        error=r["error"] or "",
    )
