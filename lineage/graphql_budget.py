"""The cost budget and argument checks every GraphQL resolver shares (lineage/graphql.py,
lineage/graphql_graph.py): see lineage/graphql.py for the limits."""

from __future__ import annotations

from collections.abc import Awaitable, Iterator
from datetime import UTC, datetime
from typing import Any, TypeVar

from graphql import GraphQLError
from strawberry.extensions import SchemaExtension
from strawberry.types import Info

from lineage.graph.base import MAX_DEPTH, MAX_WALK, LineageGraph
from lineage.graph.topology import TooLarge

T = TypeVar("T")
MAX_RESULTS = MAX_WALK  # a walk stops where its answer would be refused
MAX_QUERY_DEPTH = 10
MAX_COST = 10_000  # graph lookups + list items per request
# Parsing and validation run on the serving event loop before the budget sees a request,
# and nothing else is answered meanwhile (joins, pushes, /readyz). graphql-core stops
# parsing at this many tokens (comments included). The page's largest query (``graph``)
# has 59 tokens, GraphiQL's schema introspection 184. Validation compares same-named fields
# pairwise, so it is quadratic in them: the worst query found at the limit
# (``{ feature(id:"a"){id} feature(id:"b"){id} ... }``) parses and validates in ~60 ms at
# 1,000 tokens, ~170 ms at 2,000 and 1.7 s at 5,000 (review s53 F2).
MAX_TOKENS = 1_000
# The most bytes of a POST /graphql body, read (and refused with a 413) by the HTTP front
# before strawberry sees it, instead of limits.max_body_bytes (4 MiB, for joins). The page
# sends under 400 bytes; 1,000 tokens of query are ~5 KB. graphql-core lexes a long token
# (a string, a comment) a character at a time: a 64 KiB one takes ~10 ms; a 1 MB query of
# 300,000 fields took 5.8 s to parse and validate (review s53 F2).
MAX_BODY_BYTES = 64 << 10


class Budget:
    """What one request may still spend. Resolvers charge before they ask the graph;
    the first overrun raises, later resolvers of the same request stop without asking,
    and ``CostLimit`` turns the whole response into that one error."""

    def __init__(self, limit: int = MAX_COST) -> None:
        self.limit = limit
        self.spent = 0
        self.exceeded = False

    @property
    def message(self) -> str:
        return (
            f"query too expensive: it needs more than {self.limit} graph lookups and results; "
            "ask for fewer levels (nested upstream/downstream), a smaller depth or fewer fields"
        )

    def charge(self, cost: int) -> bool:
        """False once the budget is spent (no more graph calls for this request)."""
        if self.exceeded:
            return False
        self.spent += cost
        if self.spent > self.limit:
            self.exceeded = True
            raise GraphQLError(self.message, extensions={"code": "QUERY_TOO_EXPENSIVE"})
        return True


def _budget(info: Info) -> Budget:
    context = info.context
    budget = context.get("budget")
    if budget is None:  # executed without LineageGraphQL's context: the default budget
        budget = context["budget"] = Budget()
    assert isinstance(budget, Budget)
    return budget


def _charge(info: Info, cost: int) -> bool:
    return _budget(info).charge(cost)


class CostLimit(SchemaExtension):
    """A request over budget answers with the one budget error and no data: partial
    data cut off at arbitrary places would read like real (empty) lineage."""

    def on_execute(self) -> Iterator[None]:
        yield
        context = self.execution_context.context
        budget = context.get("budget") if isinstance(context, dict) else None
        result = self.execution_context.result
        if isinstance(budget, Budget) and budget.exceeded and result is not None:
            result.data = None
            result.errors = [GraphQLError(budget.message, extensions={"code": "QUERY_TOO_EXPENSIVE"})]


def _graph(info: Info) -> LineageGraph:
    graph: LineageGraph = info.context["graph"]
    return graph


def _ms(t: datetime | None) -> int | None:
    if t is None:
        return None
    if t.tzinfo is None:
        t = t.replace(tzinfo=UTC)
    return int(t.timestamp() * 1000)


def _depth(depth: int) -> int:
    if not 1 <= depth <= MAX_DEPTH:
        raise GraphQLError(f"depth must be between 1 and {MAX_DEPTH}, got {depth}")
    return depth


async def _walked(walk: Awaitable[T]) -> T:
    """A graph walk's answer; one that reached too much is the caller's GraphQL error."""
    try:
        return await walk
    except TooLarge as e:
        raise GraphQLError(str(e)) from None


def _bounded(items: list[Any], what: str) -> list[Any]:
    if len(items) > MAX_RESULTS:
        raise GraphQLError(
            f"{what}: {len(items)} results exceed the limit of {MAX_RESULTS}; narrow the query"
        )
    return items
