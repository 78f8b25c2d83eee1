"""Drift records in the lineage graph: what the serving side's drift monitor detected
(featurestore/quality/monitor.py), per feature, queryable over GraphQL
(``feature(id) { drift(since, until) { at statistic pValue windowSize reference } }``).

    (:DriftRecord {key, feature_id, at_ms, test, statistic, p_value, window_size,
                   reference, server})

``reference`` is the data version whose profile the window was tested against. A record
is identified by (feature, time, server): writing it again changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

DRIFT_SCHEMA = (
    "CREATE CONSTRAINT drift_key IF NOT EXISTS FOR (d:DriftRecord) REQUIRE d.key IS UNIQUE",
    "CREATE INDEX drift_feature IF NOT EXISTS FOR (d:DriftRecord) ON (d.feature_id)",
    "CREATE INDEX drift_time IF NOT EXISTS FOR (d:DriftRecord) ON (d.at_ms)",  # pruning: docs/lineage.md
)

WRITE_DRIFT = """
UNWIND $rows AS r
MERGE (d:DriftRecord {key: r.key})
SET d.feature_id = r.feature_id, d.at_ms = r.at_ms, d.test = r.test, d.statistic = r.statistic,
    d.p_value = r.p_value, d.window_size = r.window_size, d.reference = r.reference, d.server = r.server
"""

READ_DRIFT = (
    "MATCH (d:DriftRecord) WHERE d.feature_id = $id AND ($since IS NULL OR d.at_ms >= $since)"
    " AND ($until IS NULL OR d.at_ms < $until)"
    " RETURN d.feature_id AS feature_id, d.at_ms AS at_ms, d.test AS test, d.statistic AS statistic,"
    " d.p_value AS p_value, d.window_size AS window_size, d.reference AS reference, d.server AS server"
    " ORDER BY d.at_ms DESC, d.server DESC LIMIT $limit"
)


@dataclass(frozen=True, slots=True)
class DriftRecord:
    feature_id: str  # view:feature
    at_ms: int  # when the window was tested
    test: str  # ks | chi_square
    statistic: float
    p_value: float
    window_size: int
    reference: int  # the data version whose reference profile was tested against
    server: str  # which serving process (windows are per worker)

    @property
    def key(self) -> str:
        return f"{self.feature_id}|{self.at_ms}|{self.server}"

    def row(self) -> dict[str, object]:
        return {
            "key": self.key,
            "feature_id": self.feature_id,
            "at_ms": self.at_ms,
            "test": self.test,
            "statistic": self.statistic,
            "p_value": self.p_value,
            "window_size": self.window_size,
            "reference": self.reference,
            "server": self.server,
        }

    @staticmethod
    def from_row(r: dict[str, object]) -> DriftRecord:
        return DriftRecord(
            str(r["feature_id"]),
            int(r["at_ms"]),  # type: ignore[call-overload]
            str(r["test"]),
            float(r["statistic"]),  # type: ignore[arg-type]
            float(r["p_value"]),  # type: ignore[arg-type]
            int(r["window_size"]),  # type: ignore[call-overload]
            int(r["reference"]),  # type: ignore[call-overload]
            str(r["server"]),
        )


def in_range(
    records: list[DriftRecord], since_ms: int | None, until_ms: int | None, limit: int
) -> list[DriftRecord]:
    """Records in [since, until), oldest first, the newest ``limit`` of them."""
    out = [
        r
        for r in records
        if (since_ms is None or r.at_ms >= since_ms) and (until_ms is None or r.at_ms < until_ms)
    ]
    out.sort(key=lambda r: (r.at_ms, r.server))
    return out[-limit:] if limit > 0 else []
