"""A Bolt write waits for the write cut short before it (lineage/graph/bolt.py). When that
wait gives up, or a stop cancels it, the write was never sent: its coroutine must never
have been made. Review s56 r2 #4: `coroutine 'BoltGraph._retrying' was never awaited` once a
minute while the graph hung, and at the stop (an error under -W error)."""

from __future__ import annotations

import asyncio
import gc
import warnings

import pytest

from lineage.graph.base import GraphUnavailable
from lineage.graph.bolt import BoltGraph
from tests.integration.test_lineage_pipeline import ev


def never_awaited(caught: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in caught if "never awaited" in str(w.message)]


async def graph_behind_a_cut_write() -> BoltGraph:
    """A graph whose last write was cut short and is still unanswered (nothing listens:
    the write that follows must not get as far as connecting)."""
    graph = BoltGraph("bolt://127.0.0.1:9", "u", "p", write_timeout=0.2)
    graph._unfinished = asyncio.get_running_loop().create_future()
    return graph


async def test_a_write_that_gives_up_waiting_for_the_cut_write_leaves_no_coroutine_behind() -> None:
    graph = await graph_behind_a_cut_write()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(GraphUnavailable, match="still unanswered"):
            await graph.write_events([ev(1)])
        gc.collect()
    assert never_awaited(caught) == []
    await graph.close()


async def test_a_write_stopped_while_it_waits_for_the_cut_write_leaves_no_coroutine_behind() -> None:
    graph = await graph_behind_a_cut_write()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        write = asyncio.create_task(graph.write_events([ev(1)]))
        await asyncio.sleep(0.05)
        write.cancel()  # the consumer's stop (consumer_graph.until_stopped)
        ended = await asyncio.gather(write, return_exceptions=True)
        assert isinstance(ended[0], asyncio.CancelledError)
        del ended, write  # (their traceback holds the frames, and what the frames hold)
        for _ in range(3):  # and the loop's last callbacks (the cancellation's) let go
            await asyncio.sleep(0)
        gc.collect()
    assert never_awaited(caught) == []
    await graph.close()
