"""A publication under cancellation (featurestore/publication.py): the pointer's swap
runs to its end, and what it ends as decides what the run is."""

from __future__ import annotations

import asyncio

import pytest

from featurestore.errors import Conflict
from featurestore.publication import swap_to_the_end


async def swap(outcome: Exception | None) -> None:
    await asyncio.sleep(0.05)
    if outcome is not None:
        raise outcome


async def stopped_during(outcome: Exception | None) -> bool:
    async def run() -> bool:
        published = await swap_to_the_end(swap(outcome))
        task = asyncio.current_task()
        assert task is not None and task.cancelling() == 0  # taken back: later awaits run as usual
        await asyncio.sleep(0)
        return published

    task = asyncio.create_task(run())
    await asyncio.sleep(0.01)
    task.cancel()  # SIGTERM while the pointer is written
    return await task


async def test_a_swap_that_lands_after_the_stop_makes_a_published_run() -> None:
    assert await stopped_during(None) is True


async def test_a_swap_that_fails_after_the_stop_is_a_stop_not_a_conflict_to_retry() -> None:
    with pytest.raises(asyncio.CancelledError) as info:
        await stopped_during(Conflict("data version of view 'v' is 3, not 2"))
    assert isinstance(info.value.__cause__, Conflict)


async def test_without_a_stop_the_swap_is_awaited_as_it_is() -> None:
    assert await swap_to_the_end(swap(None)) is False
    with pytest.raises(Conflict):
        await swap_to_the_end(swap(Conflict("moved")))
