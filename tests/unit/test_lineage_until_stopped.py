"""lineage/consumer_graph.until_stopped: a graph call a stop cancels, whatever it raises
while it unwinds, ends as Stopped and leaves asyncio nothing to log ("Task exception was
never retrieved"; final read s56)."""

from __future__ import annotations

import asyncio
import gc
from typing import Any

import pytest

from lineage.consumer_graph import Stopped, until_stopped


async def test_a_call_that_answers_before_the_stop_gives_its_answer() -> None:
    async def call() -> int:
        return 7

    assert await until_stopped(call(), asyncio.Event()) == 7


async def test_a_call_that_fails_while_unwinding_from_a_stop_is_stopped_and_its_error_not_logged_as_lost() -> (
    None
):
    loop = asyncio.get_running_loop()
    reported: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: reported.append(context))
    started, stop = asyncio.Event(), asyncio.Event()

    async def call() -> None:
        started.set()
        try:
            await asyncio.sleep(3600)  # a graph that never answers
        except asyncio.CancelledError:
            await asyncio.sleep(0.05)  # the session closing its connection, past the wait below
            raise RuntimeError("the connection broke while closing") from None

    async def stop_soon() -> None:
        await started.wait()
        stop.set()

    stopper = asyncio.ensure_future(stop_soon())
    try:
        with pytest.raises(Stopped):
            await until_stopped(call(), stop)
        await asyncio.sleep(0.2)  # the call's unwinding ends with its error
        gc.collect()
        await asyncio.sleep(0)
    finally:
        loop.set_exception_handler(None)
        await stopper
    assert [c.get("message") for c in reported] == []
