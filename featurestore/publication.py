"""A materialization's publication under cancellation (SIGTERM on ``featurestore
materialize``): the data-version pointer's swap and the cleanup after it run to their
end, then the cancellation goes through (``Materializer._full``)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable

log = logging.getLogger("featurestore.materialize")


async def swap_to_the_end(swap: Awaitable[None]) -> bool:
    """Run the data-version pointer's compare-and-swap to its end even when the run is
    cancelled meanwhile (SIGTERM): its write may still land after the cancel (a file
    registry writes on a thread, an etcd request is in flight), and a run that then
    dropped its rows left the pointer on an empty version (review s55: 4 runs in 32).
    True when a cancellation arrived meanwhile (the caller finishes the cleanup, then
    lets it through); the swap's own error is raised."""
    task = asyncio.ensure_future(swap)
    stopped = False
    while True:
        try:
            await asyncio.shield(task)
            return stopped
        except asyncio.CancelledError:
            if task.cancelled():  # (only a cancel of the task itself, never the shield's)
                raise
            stopped = True
            if task.done():
                task.result()  # the swap's error, if it failed
                return True


async def cleanup_to_the_end(step: Awaitable[tuple[int, ...]]) -> tuple[int, ...]:
    """Run the cleanup after a publication to its end (seconds: a scan of the store per
    version) even when the run is cancelled meanwhile, as the CLI does on SIGTERM, then
    let the cancellation through; a second one stops it where it is."""
    task = asyncio.ensure_future(step)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        if task.done():
            raise
        log.warning("cancelled after publishing: finishing the cleanup of the replaced version first")
        await task
        raise
