"""The Bolt adapter's walks over DERIVED_FROM (upstream, downstream, a table's impact) and
the lookups they share (a mixin of BoltGraph, kept apart so each module stays one noun).

A walk asks one indexed query per hop (``:Feature {id: x}`` from the frontier), bounded
by LIMIT to the features it may still reach: at most MAX_WALK in all, else TooLarge. A
variable-length pattern (``-[:DERIVED_FROM*1..5]-``) enumerated every path instead:
exponential in a wide graph, and without the label no index was used."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from lineage.graph.base import MAX_WALK, Impact, table_too_large, walk_too_large
from lineage.graph.cypher import LIVE


class BoltWalks:
    async def _read(self, query: str, **params: Any) -> list[dict[str, Any]]:
        raise NotImplementedError

    async def _walk(
        self,
        name: str,
        starts: Sequence[str],
        depth: int,
        as_of_ms: int | None,
        out: bool,
        limit: int = MAX_WALK,
    ) -> set[str]:
        """Features within ``depth`` live DERIVED_FROM hops of any of ``starts`` (the starts
        not included), one indexed query per hop, each bounded by LIMIT: TooLarge beyond
        ``limit`` features."""
        arrow = "-[r:DERIVED_FROM]->" if out else "<-[r:DERIVED_FROM]-"
        query = (
            f"UNWIND $frontier AS x MATCH (f:Feature {{id: x}}){arrow}(g:Feature)"
            f" WHERE {LIVE.format(r='r')} AND NOT g.id IN $seen RETURN DISTINCT g.id AS id LIMIT $room"
        )
        seen, reached = set(starts), set[str]()
        frontier = sorted(seen)
        for _ in range(depth):
            if not frontier:
                break
            room = limit - len(reached) + 1  # one more than may be reached: it tells "too many"
            rows = await self._read(query, frontier=frontier, seen=sorted(seen), room=room, t=as_of_ms)
            if len(rows) >= room:
                raise walk_too_large(name, depth)
            frontier = sorted(r["id"] for r in rows)
            seen.update(frontier)
            reached.update(frontier)
        return reached

    async def upstream(self, feature_id: str, depth: int, as_of_ms: int | None = None) -> list[str]:
        return sorted(await self._walk(feature_id, [feature_id], depth, as_of_ms, out=True))

    async def downstream(self, feature_id: str, depth: int, as_of_ms: int | None = None) -> list[str]:
        return sorted(await self._walk(feature_id, [feature_id], depth, as_of_ms, out=False))

    async def _live(self, match: str, returned: str, **params: Any) -> list[str]:
        """Sorted distinct ``returned`` over the matches whose edge ``r`` is live at ``$t``."""
        rows = await self._read(
            f"{match} WHERE {LIVE.format(r='r')} RETURN DISTINCT {returned} AS n", **params
        )
        return sorted(r["n"] for r in rows)

    async def services_using(self, feature_id: str, as_of_ms: int | None = None) -> list[str]:
        return await self._live(
            "MATCH (s:FeatureService)-[r:USES]->(f:Feature {id: $id})", "s.name", id=feature_id, t=as_of_ms
        )

    async def table_features(self, name: str, as_of_ms: int | None = None) -> list[str]:
        return await self._live(
            "MATCH (f:Feature)-[r:PRODUCED_BY]->(t:Table {name: $n})", "f.id", n=name, t=as_of_ms
        )

    async def impact(self, table: str, depth: int, as_of_ms: int | None = None) -> Impact:
        direct = await self.table_features(table, as_of_ms)
        if len(direct) > MAX_WALK:
            raise table_too_large(table)
        name = f"the features of {table}"
        features = set(direct) | await self._walk(
            name, direct, depth, as_of_ms, False, MAX_WALK - len(direct)
        )
        services: set[str] = set()
        if features:
            rows = await self._read(
                "UNWIND $ids AS x MATCH (s:FeatureService)-[r:USES]->(f:Feature {id: x}) WHERE "
                + LIVE.format(r="r")
                + " RETURN DISTINCT s.name AS n",
                ids=sorted(features),
                t=as_of_ms,
            )
            services = {r["n"] for r in rows}
        return Impact(tuple(sorted(features)), tuple(sorted(services)))
