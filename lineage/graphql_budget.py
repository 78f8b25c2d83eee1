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
