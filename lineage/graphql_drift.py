"""The GraphQL type of a drift record (``Feature.drift`` in lineage/graphql.py)."""

from __future__ import annotations

from datetime import UTC, datetime

import strawberry

from lineage.graph.drift import DriftRecord


@strawberry.type(description="A window of served values one of whose drift tests rejected the reference.")
class Drift:
    at: datetime = strawberry.field(description="When the window was tested.")
    test: str = strawberry.field(
        description="ks (numeric), chi_square (categorical) or null_rate (the share of nulls, any feature)."
    )
    statistic: float = strawberry.field(
        description="KS distance, chi-square statistic, or for null_rate the window's share of nulls."
    )
    p_value: float
    window_size: int = strawberry.field(
        description="Values tested (per serving worker): the non-null ones, or for null_rate all of the window."
    )
    reference: int = strawberry.field(description="Data version whose reference profile was tested against.")
    server: str

    @staticmethod
    def of(r: DriftRecord) -> Drift:
        return Drift(
            at=datetime.fromtimestamp(r.at_ms / 1000, UTC),
            test=r.test,
            statistic=r.statistic,
            p_value=r.p_value,
            window_size=r.window_size,
            reference=r.reference,
            server=r.server,
        )
