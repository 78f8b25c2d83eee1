"""How the lineage consumer (lineage/consumer.py) reads the graph's failures, and how it
keeps a graph call from outliving a request to stop."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

from lineage.graph.base import GraphUnavailable

T = TypeVar("T")

# The server cannot take writes now, whatever the statement (the chunk waits): also the
# Bolt driver's lost-server errors, by name (no driver import), should an adapter leak them.
UNAVAILABLE_NAMES = frozenset({"ServiceUnavailable", "SessionExpired"})
# How long a graph call cancelled by a stop may take to unwind (a Bolt session closing
# its connection): a hung server gets no more of the shutdown than this.
UNWIND_SECONDS = 1.0


class Stopped(Exception):
    """Asked to stop before a graph call answered: the call was cancelled."""


async def until_stopped(work: Coroutine[Any, Any, T], stop: asyncio.Event) -> T:
    """``work``'s answer, or Stopped as soon as ``stop`` is set first. A graph server that
    stops answering held a batch's write (and SIGTERM) until the write's deadline, 60 s
    on Bolt, past Kubernetes' 30 s grace period (review s56 #2)."""
    task = asyncio.ensure_future(work)
    waiter = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
        if not task.done():
            task.cancel()
            # nobody reads its end now: an error it raises while unwinding is taken here,
            # not logged by asyncio as "never retrieved" when the task is collected
            task.add_done_callback(_forget)
    if task.done():
        return task.result()
    await asyncio.wait({task}, timeout=UNWIND_SECONDS)
    raise Stopped


def _forget(task: asyncio.Future[Any]) -> None:
    if not task.cancelled():
        task.exception()


def unavailable(failure: Exception) -> bool:
    return isinstance(failure, (GraphUnavailable, OSError)) or type(failure).__name__ in UNAVAILABLE_NAMES


def why(failure: Exception) -> str:
    """A graph error with its code (a Bolt error's repr is ``ClientError()``)."""
    code = getattr(failure, "code", None)
    return f"{type(failure).__name__} {code}: {failure}" if isinstance(code, str) else repr(failure)
