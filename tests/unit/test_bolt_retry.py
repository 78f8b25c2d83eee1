"""Which Bolt errors the graph adapter retries, which it reports as GraphUnavailable,
and which it raises as the request's own fault. No server: the work fails as told."""

from __future__ import annotations

from typing import Any

import pytest
from neo4j import exceptions as neo

from lineage.graph.base import GraphUnavailable
from lineage.graph.bolt import BoltGraph


def server_error(code: str) -> neo.Neo4jError:
    return neo.Neo4jError._hydrate_neo4j(code=code, message="as told")


async def attempts_until_done(*errors: Exception, attempts: int = 4) -> int:
    graph = BoltGraph("bolt://127.0.0.1:1", "u", "p")
    calls = 0

    async def work(session: Any) -> str:
        nonlocal calls
        calls += 1
        if calls <= len(errors):
            raise errors[calls - 1]
        return "done"

    try:
        assert await graph._retrying("test", work, attempts=attempts) == "done"
    finally:
        await graph.close()
    return calls


@pytest.mark.parametrize(
    "error",
    [
        server_error("Neo.TransientError.Transaction.DeadlockDetected"),
        server_error("Neo.ClientError.Schema.ConstraintValidationFailed"),
        # what ArcadeDB answers when a racing writer commits between our MATCH and SET
        server_error("Neo.ClientError.Statement.EntityNotFound"),
        neo.ServiceUnavailable("connection reset"),
        neo.SessionExpired("leader moved"),
    ],
)
async def test_conflicts_and_broken_connections_are_retried(error: Exception) -> None:
    assert await attempts_until_done(error, error) == 3


async def test_a_conflict_that_keeps_coming_back_is_graph_unavailable() -> None:
    error = server_error("Neo.ClientError.Statement.EntityNotFound")
    with pytest.raises(GraphUnavailable, match="failed 4 times"):
        await attempts_until_done(*[error] * 4)


@pytest.mark.parametrize(
    "error",
    [
        server_error("Neo.ClientError.Security.Unauthorized"),
        server_error("Neo.ClientError.Security.Forbidden"),
    ],
)
async def test_refused_credentials_are_graph_unavailable_at_once(error: Exception) -> None:
    with pytest.raises(GraphUnavailable, match="graph test"):
        await attempts_until_done(error)


async def test_a_bad_statement_is_raised_as_is() -> None:
    with pytest.raises(neo.CypherSyntaxError):
        await attempts_until_done(server_error("Neo.ClientError.Statement.SyntaxError"))
