"""The Bolt adapter's session helpers (lineage/graph/bolt.py): a deadline, a write in a
transaction of its own, a statement whose result is not read."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any, TypeVar

from neo4j import AsyncSession

from lineage.graph.base import GraphUnavailable

T = TypeVar("T")


async def within(what: str, seconds: float, work: Awaitable[T]) -> T:
    """``work``, or GraphUnavailable once it has taken ``seconds`` (it is cancelled)."""
    try:
        async with asyncio.timeout(seconds):
            return await work
    except TimeoutError:
        raise GraphUnavailable(
            f"graph {what} took longer than {seconds:g} s: the graph server is not answering or is overloaded"
        ) from None


def forget(task: asyncio.Future[Any]) -> None:
    """A write cut short: its outcome is the retry's to find (no 'never retrieved' log)."""
    if not task.cancelled():
        task.exception()


async def transaction(
    session: AsyncSession, query: str, params: dict[str, Any], tx_seconds: float
) -> list[dict[str, Any]]:
    """``query`` in a transaction of its own: all of it or none. In auto-commit, ArcadeDB
    kept part of a statement that then failed (DeadlockDetected) and was retried: two
    writers of one batch counted events twice (4 of 6 tries, review s56 r2 #2). In a
    transaction the second to create an event's node under its unique key fails at commit
    (ConstraintError, retried) and finds it written; one whose client left before COMMIT
    (a consumer stopped while the server hung) is rolled back with the connection."""
    tx = await session.begin_transaction(timeout=tx_seconds)
    try:
        rows = [dict(r) async for r in await tx.run(query, params)]
        await tx.commit()
        return rows
    finally:
        await tx.close()  # rolls back what did not commit


async def consume(session: AsyncSession, query: str, **params: Any) -> None:
    result = await session.run(query, params)
    await result.consume()
