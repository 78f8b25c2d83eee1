"""The Bolt adapter's time series (a mixin of BoltGraph, kept apart so each module stays
one noun): the lineage events a feature's windows left, and its drift records."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from lineage.events import LineageEvent
from lineage.graph.drift import READ_DRIFT, WRITE_DRIFT, DriftRecord


class BoltHistory:
    async def _read(self, query: str, **params: Any) -> list[dict[str, Any]]:
        raise NotImplementedError

    async def _write(self, query: str, **params: Any) -> list[dict[str, Any]]:
        raise NotImplementedError

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
