"""GraphQL over the lineage graph for analysts (strawberry, GraphiQL at ``/graphql``).

    feature(id, asOf) { upstream(depth) downstream(depth) producedBy servedBy versions featureServices drift(since, until) }
    table(name, asOf) { features(limit, offset) featureCount impact(depth) { features featureServices } }
    lineageEvents(featureId, since, until, limit)

Guards: ``depth`` is 1..5, ``limit`` 1..1000, lists over 1,000 items and queries nested
deeper than 10 are refused, and each request has a cost budget (every graph lookup and
every list item resolved costs 1; ``MAX_COST`` per request): nesting multiplies lookups
(``upstream { upstream { ... } }`` asks the graph once per feature per level), so the
limits per list and on depth alone do not bound the work. A lookup is charged before it
is made, for as many as it may make (a walk: one per hop), and its own work is bounded:
a walk stops at ``MAX_WALK`` features (and the in-process graph at ``MAX_WALK_STEPS``
edges examined) with an error naming a smaller depth, a Bolt read at its timeout. A query
over ``MAX_TOKENS`` is not parsed past them, a body over ``MAX_BODY_BYTES`` is refused by
the HTTP front (both on the serving event loop's time: graphql_budget.py says why these
numbers). Every problem is a GraphQL error in the response, or a 400 with the service's JSON
error body (graphql_http.py), never an HTTP 500.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import strawberry
from graphql import GraphQLError
from strawberry.extensions import (
    AddValidationRules,
    MaxAliasesLimiter,
    MaxTokensLimiter,
    ParserCache,
    QueryDepthLimiter,
    ValidationCache,
)
from strawberry.schema.config import StrawberryConfig
from strawberry.types import Info

from lineage.events import LineageEvent
from lineage.graph.base import FeatureInfo, LineageGraph
from lineage.graphql_budget import (
    MAX_COST,
    MAX_QUERY_DEPTH,
    MAX_RESULTS,
    MAX_TOKENS,
    Budget,
    CostLimit,
    _bounded,
    _charge,
    _depth,
    _graph,
    _ms,
    _walked,
)
from lineage.graphql_drift import Drift
from lineage.graphql_errors import GraphErrors, log_errors
from lineage.graphql_graph import Change, GraphQueries, changes
from lineage.graphql_http import GraphQLTransport
from lineage.graphql_scalars import LONG, Long

__all__ = ["MAX_COST", "Budget", "LineageGraphQL", "schema"]


@strawberry.type(
    description="Where a feature's values come from (online store, batch source, upstream table)."
)
class TableRef:
    name: str
    role: str


@strawberry.type(description="A serving instance that served the feature, with counts.")
class ServedBy:
    server: str
    count: Long
    last_seen: datetime


@strawberry.type(description="What a change to a table affects.")
class Impact:
    features: list[str]
    feature_services: list[str]


@strawberry.type(description="One served (feature, version) in one window on one server.")
class LineageEventType:
    feature_id: str
    feature_version: Long
    source_table: str
    timestamp: str
    upstream_deps: list[str]
    registry_version: Long
    served_count: Long
    trace_ids: list[str]
    service: str

    @staticmethod
    def of(e: LineageEvent) -> LineageEventType:
        return LineageEventType(
            feature_id=e.feature_id,
            feature_version=Long(e.feature_version),
            source_table=e.source_table,
            timestamp=e.timestamp,
            upstream_deps=list(e.upstream_deps),
            registry_version=Long(e.registry_version),
            served_count=Long(e.served_count),
            trace_ids=list(e.trace_ids),
            service=e.service,
        )


@strawberry.type(description="A feature, 'view:feature'.")
class Feature:
    id: str
    view: str
    dtype: str
    version: Long = strawberry.field(description="Registry version in which its definition last changed.")
    versions: list[Long]
    as_of: strawberry.Private[int | None]

    @staticmethod
    def of(f: FeatureInfo, as_of: int | None) -> Feature:
        return Feature(
            id=f.id,
            view=f.view,
            dtype=f.dtype,
            version=Long(f.version),
            versions=[Long(v) for v in f.versions],
            as_of=as_of,
        )

    async def _features(self, info: Info, ids: list[str]) -> list[Feature]:
        graph = _graph(info)
        if not _charge(info, len(_bounded(ids, "features"))):  # one lookup per feature
            return []
        out = []
        for fid in ids:
            f = await graph.feature(fid, self.as_of) or FeatureInfo(fid, fid.partition(":")[0], "", 0, ())
            out.append(Feature.of(f, self.as_of))
        return out

    @strawberry.field(description="Features this one derives from, up to `depth` hops.")
    async def upstream(self, info: Info, depth: int = 1) -> list[Feature]:
        if not _charge(info, _depth(depth)):  # a lookup per hop
            return []
        return await self._features(info, await _walked(_graph(info).upstream(self.id, depth, self.as_of)))

    @strawberry.field(description="Features derived from this one, up to `depth` hops.")
    async def downstream(self, info: Info, depth: int = 1) -> list[Feature]:
        if not _charge(info, _depth(depth)):
            return []
        return await self._features(info, await _walked(_graph(info).downstream(self.id, depth, self.as_of)))

    @strawberry.field(description="Tables the feature is produced by: online store, batch source, upstream.")
    async def produced_by(self, info: Info) -> list[TableRef]:
        if not _charge(info, 1):
            return []
        refs = _bounded(await _graph(info).produced_by(self.id, self.as_of), "producedBy")
        if not _charge(info, len(refs)):
            return []
        return [TableRef(name=t.name, role=t.role) for t in refs]

    @strawberry.field(
        description="Serving instances that served it (seen since `since`), with value counts, the most "
        "recently seen first, at most `limit` (a fleet's rollouts add instances that are never pruned)."
    )
    async def served_by(self, info: Info, since: datetime | None = None, limit: int = 100) -> list[ServedBy]:
        if not 1 <= limit <= MAX_RESULTS:
            raise GraphQLError(f"limit must be between 1 and {MAX_RESULTS}, got {limit}")
        if not _charge(info, 1):
            return []
        rows = await _graph(info).served_by(self.id, _ms(since), limit)
        if not _charge(info, len(rows)):
            return []
        return [
            ServedBy(
                server=s.server,
                count=Long(s.count),
                last_seen=datetime.fromtimestamp(s.last_seen_ms / 1000, UTC),
            )
            for s in rows
        ]

    @strawberry.field(
        description="Job runs upstream of it (its view's, those of the features it derives from, "
        "and of the tables they read) since `since`, newest first."
    )
    async def changes(self, info: Info, since: datetime | None = None, limit: int = 100) -> list[Change]:
        return await changes(info, self.id, None, since, limit)

    @strawberry.field(description="Feature services that use it.")
    async def feature_services(self, info: Info) -> list[str]:
        if not _charge(info, 1):
            return []
        names = _bounded(await _graph(info).services_using(self.id, self.as_of), "featureServices")
        return names if _charge(info, len(names)) else []

    @strawberry.field(description="Drift detected on its served values in [since, until), oldest first.")
    async def drift(
        self, info: Info, since: datetime | None = None, until: datetime | None = None, limit: int = 100
    ) -> list[Drift]:
        if not 1 <= limit <= MAX_RESULTS:
            raise GraphQLError(f"limit must be between 1 and {MAX_RESULTS}, got {limit}")
        if not _charge(info, 1):
            return []
        records = await _graph(info).drift(self.id, _ms(since), _ms(until), limit)
        return [Drift.of(r) for r in records] if _charge(info, len(records)) else []


@strawberry.type(description="A table: an online store table, a batch source or an upstream warehouse table.")
class Table:
    name: str
    as_of: strawberry.Private[int | None]

    @strawberry.field(
        description="Features produced by this table, by id: `limit` of them (1..1000; default: all, "
        "an error past 1000) from `offset` on (featureCount tells how many there are)."
    )
    async def features(self, info: Info, limit: int | None = None, offset: int = 0) -> list[Feature]:
        graph = _graph(info)
        if limit is not None and not 1 <= limit <= MAX_RESULTS:
            raise GraphQLError(f"limit must be between 1 and {MAX_RESULTS}, got {limit}")
        if offset < 0:
            raise GraphQLError(f"offset must be 0 or more, got {offset}")
        if not _charge(info, 1):
            return []
        ids = await graph.table_features(self.name, self.as_of)
        if limit is None and len(ids) - offset > MAX_RESULTS:
            raise GraphQLError(
                f"features: {len(ids) - offset} results exceed the limit of {MAX_RESULTS}; "
                f"ask for them in pages: features(limit: {MAX_RESULTS}, offset: 0), then offset: {MAX_RESULTS}, ..."
            )
        ids = ids[offset:] if limit is None else ids[offset : offset + limit]
        if not _charge(info, len(ids)):  # one lookup per feature
            return []
        out = []
        for fid in ids:
            f = await graph.feature(fid, self.as_of)
            if f is not None:
                out.append(Feature.of(f, self.as_of))
        return out

    @strawberry.field(description="How many features this table produces (what `features` pages through).")
    async def feature_count(self, info: Info) -> int:
        if not _charge(info, 1):
            return 0
        return len(await _graph(info).table_features(self.name, self.as_of))

    @strawberry.field(description="Job runs that read or wrote the table since `since`, newest first.")
    async def changes(self, info: Info, since: datetime | None = None, limit: int = 100) -> list[Change]:
        return await changes(info, None, self.name, since, limit)

    @strawberry.field(
        description="Features (derived up to `depth` hops) and feature services affected by a change."
    )
    async def impact(self, info: Info, depth: int = 3) -> Impact:
        # before the walk, every lookup it may make: the table's features, a hop per
        # level (one walk from all of them, at most MAX_WALK features), their services
        if not _charge(info, 2 + _depth(depth)):
            return Impact(features=[], feature_services=[])
        result = await _walked(_graph(info).impact(self.name, depth, self.as_of))
        impact = Impact(
            features=_bounded(list(result.features), "impact.features"),
            feature_services=_bounded(list(result.feature_services), "impact.featureServices"),
        )
        if not _charge(info, len(impact.features) + len(impact.feature_services)):
            return Impact(features=[], feature_services=[])
        return impact


@strawberry.type
class Query(GraphQueries):
    @strawberry.field(description="One feature by id ('view:feature'); asOf answers for a past instant.")
    async def feature(self, info: Info, id: str, as_of: datetime | None = None) -> Feature | None:
        if not _charge(info, 1):
            return None
        at = _ms(as_of)
        f = await _graph(info).feature(id, at)
        return None if f is None else Feature.of(f, at)

    @strawberry.field(
        description="One table by name, e.g. 'warehouse.users' or 'redis://fs/demo/user_profile'."
    )
    async def table(self, info: Info, name: str, as_of: datetime | None = None) -> Table | None:
        if not _charge(info, 1) or not await _graph(info).table_exists(name):
            return None
        return Table(name=name, as_of=_ms(as_of))

    @strawberry.field(
        description="Lineage events of a feature in [since, until), oldest first, at most `limit`."
    )
    async def lineage_events(
        self,
        info: Info,
        feature_id: str,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 100,
    ) -> list[LineageEventType]:
        if not 1 <= limit <= MAX_RESULTS:
            raise GraphQLError(f"limit must be between 1 and {MAX_RESULTS}, got {limit}")
        if not _charge(info, 1):
            return []
        events = await _graph(info).events(feature_id, _ms(since), _ms(until), limit)
        if not _charge(info, len(events)):
            return []
        return [LineageEventType.of(e) for e in events]


# The depth and alias rules, built once: each limiter makes a new rule class when it is
# constructed, and ValidationCache keys on the rule classes, so rules built per request
# would never hit the cache.
_RULES = [
    *QueryDepthLimiter(max_depth=MAX_QUERY_DEPTH).validation_rules,
    *MaxAliasesLimiter(max_alias_count=30).validation_rules,
]


class _Schema(strawberry.Schema):
    def process_errors(self, errors: list[GraphQLError], execution_context: Any = None) -> None:
        """strawberry logs every error at ERROR, a caller's syntax error or refused limit
        too: one line (with the query) per bad request. Those are the caller's and go to
        DEBUG, an unavailable graph to a WARNING now and then (graphql_errors.py); any
        other exception a resolver raised stays an ERROR with its traceback."""
        ours = log_errors(errors)
        if ours:
            super().process_errors(ours, execution_context)


schema = _Schema(
    query=Query,
    config=StrawberryConfig(scalar_map={Long: LONG}),
    extensions=[
        # first: parsing stops at MAX_TOKENS (graphql_budget.py), before any other work
        lambda: MaxTokensLimiter(max_token_count=MAX_TOKENS),
        # The page sends the same few query texts again and again: parsing and validating
        # one took ~16 of the ~28 ms of a depth-3 graph query (benchmarks/lineage_page.py).
        lambda: ParserCache(maxsize=256),
        lambda: ValidationCache(maxsize=256),
        lambda: AddValidationRules(_RULES),
        CostLimit,
        GraphErrors,
    ],
)


class LineageGraphQL(GraphQLTransport):
    """The ASGI app mounted at /graphql (its body and HTTP errors: graphql_http.py)."""

    def __init__(self, graph: LineageGraph, max_cost: int = MAX_COST) -> None:
        super().__init__(schema, graphql_ide="graphiql", allow_queries_via_get=True)
        self.graph = graph
        self.max_cost = max_cost

    async def get_context(self, request: Any, response: Any) -> dict[str, Any]:  # type: ignore[override]
        return {
            "request": request,
            "response": response,
            "graph": self.graph,
            "budget": Budget(self.max_cost),
        }
