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
    True when a cancellation arrived meanwhile: it is taken back (``uncancel``), the run
    is published and ends as one (its cleanup, its lineage, its summary); the caller's
    stop event keeps the next view from starting. A swap that fails after a cancellation
    raises the cancellation (a stop, not a conflict to retry), from the swap's error."""
    task = asyncio.ensure_future(swap)
    stopped = False
    while not task.done():
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            if task.cancelled():  # (only a cancel of the task itself, never the shield's)
                raise
            stopped = True
        except Exception:
            if not stopped:
                raise  # the swap's own error, without a stop
    if stopped:
        current = asyncio.current_task()
        if current is not None:
            current.uncancel()
        if (error := task.exception()) is not None:
            raise asyncio.CancelledError("stopped while publishing") from error
    return stopped


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
