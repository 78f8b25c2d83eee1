"""Deadlines (featurestore/deadlines.py): a guard cancels its task at its deadline
(from EARLY_SECONDS before it, as uvloop's whole-millisecond timers do, to the loop's
latency after it), with the loop timer armed for the earliest deadline itself, raises
TimeoutError from it, leaves nothing behind, and lets other cancellations through."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
import uvloop

from featurestore.deadlines import EARLY_SECONDS, Deadlines

LOOPS = {"asyncio": asyncio.run, "uvloop": uvloop.run}
SLACK = 0.05  # what a loaded CI machine may add to a timer's firing


@pytest.fixture(params=sorted(LOOPS))
def run(request: pytest.FixtureRequest) -> Callable[[Coroutine[Any, Any, Any]], Any]:
    return LOOPS[request.param]


async def sleeper(deadlines: Deadlines, deadline: float, seconds: float) -> float:
    """Sleep under the guard; the monotonic time the guard ended it (or the sleep did)."""
    try:
        with deadlines.guard(deadline):
            await asyncio.sleep(seconds)
    except TimeoutError:
        return -time.monotonic()  # negative: timed out
    return time.monotonic()


def test_the_loop_timer_is_armed_for_the_earliest_deadline_itself_not_its_tick(run: Any) -> None:
    async def main() -> None:
        d = Deadlines()
        t0 = time.monotonic()
        first = asyncio.ensure_future(sleeper(d, t0 + 0.2003, 5))
        await asyncio.sleep(0)
        assert d._timer_at == t0 + 0.2003
        later = asyncio.ensure_future(sleeper(d, t0 + 0.3, 5))  # later: the timer stays
        await asyncio.sleep(0)
        assert d._timer_at == t0 + 0.2003
        earlier = asyncio.ensure_future(sleeper(d, t0 + 0.1007, 5))  # earlier: re-armed for it
        await asyncio.sleep(0)
        assert d._timer_at == t0 + 0.1007
        assert all(x < 0 for x in await asyncio.gather(first, later, earlier))
        assert d.pending() == 0 and d._timer is None

    run(main())


def test_a_read_past_its_deadline_times_out_at_it(run: Any) -> None:
    async def main() -> None:
        d = Deadlines()
        deadline = time.monotonic() + 0.05
        ended = await sleeper(d, deadline, 5)
        assert ended < 0, "the sleep was not cut short"
        assert deadline - EARLY_SECONDS <= -ended <= deadline + SLACK
        assert d.pending() == 0

    run(main())


def test_a_read_that_finishes_first_leaves_no_guard_and_is_not_cancelled_later(run: Any) -> None:
    async def main() -> None:
        d = Deadlines()
        deadline = time.monotonic() + 0.05
        assert await sleeper(d, deadline, 0.001) > 0
        assert d.pending() == 0
        await asyncio.sleep(0.1)  # past the deadline: the task carries no cancellation
        assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]

    run(main())


def test_guards_with_mixed_deadlines_each_expire_at_their_own_in_any_entry_order(run: Any) -> None:
    async def main() -> None:
        d = Deadlines()
        t0 = time.monotonic()
        offsets = [0.12, 0.03, 0.2, 0.06, 0.03, 0.09]  # a later deadline first, then earlier ones
        lasts = [5, 5, 0.01, 5, 5, 0.15]  # one finishes first; one outlives an earlier expiry
        ended = await asyncio.gather(*(sleeper(d, t0 + o, s) for o, s in zip(offsets, lasts, strict=True)))
        for o, s, e in zip(offsets, lasts, ended, strict=True):
            if s < o:
                assert e > 0, (o, s)
            else:
                assert e < 0 and t0 + o - EARLY_SECONDS <= -e <= t0 + o + SLACK, (o, s, -e - t0)
        assert d.pending() == 0

    run(main())


def test_two_deadlines_within_one_tick_expire_each_at_its_own(run: Any) -> None:
    async def main() -> None:
        d = Deadlines()
        base = (int(time.monotonic() * 1000) + 60) / 1000  # a tick 60 ms ahead
        first, second = base + 0.0001, base + 0.0009  # both in that tick, 0.8 ms apart
        a = asyncio.ensure_future(sleeper(d, first, 5))
        b = asyncio.ensure_future(sleeper(d, second, 5))
        ended = await asyncio.gather(a, b)
        assert first - EARLY_SECONDS <= -ended[0] <= first + SLACK
        assert second - EARLY_SECONDS <= -ended[1] <= second + SLACK
        assert d.pending() == 0

    run(main())


def test_a_cancellation_from_outside_passes_through_as_cancelled_error(run: Any) -> None:
    async def main() -> None:
        d = Deadlines()
        task = asyncio.ensure_future(sleeper(d, time.monotonic() + 5, 5))
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert d.pending() == 0

    run(main())


def test_a_cancellation_from_outside_after_the_deadline_fired_is_still_a_cancellation(run: Any) -> None:
    async def main() -> None:
        d = Deadlines()

        async def both() -> None:
            with d.guard(time.monotonic() + 0.02):
                try:
                    await asyncio.sleep(5)
                finally:  # the deadline fired; the client goes away while we clean up
                    asyncio.current_task().cancel()  # type: ignore[union-attr]
                    await asyncio.sleep(0)

        with pytest.raises(asyncio.CancelledError):
            await asyncio.ensure_future(both())

    run(main())


def test_a_deadline_already_passed_cancels_at_the_next_loop_iteration(run: Any) -> None:
    async def main() -> None:
        d = Deadlines()
        t0 = time.monotonic()
        ended = await sleeper(d, t0 - 1, 5)
        assert ended < 0 and -ended - t0 < SLACK

    run(main())


def test_a_deadlines_with_guards_on_a_running_loop_refuses_a_second_loop() -> None:
    d = Deadlines()

    async def hold(entered: Any, release: Any) -> None:
        with d.guard(time.monotonic() + 5):
            entered.set()
            await asyncio.wrap_future(release)

    import concurrent.futures
    import threading

    entered, release = threading.Event(), concurrent.futures.Future[None]()
    other = threading.Thread(target=asyncio.run, args=(hold(entered, release),), daemon=True)
    other.start()
    try:
        assert entered.wait(5)
        with pytest.raises(RuntimeError, match="one event loop"):
            asyncio.run(sleeper(d, time.monotonic() + 1, 0.001))
    finally:
        release.set_result(None)
        other.join(5)


def test_one_deadlines_serves_a_second_event_loop_after_the_first_is_gone() -> None:
    d = Deadlines()
    for runner in (asyncio.run, uvloop.run, asyncio.run):
        assert runner(sleeper(d, time.monotonic() + 0.02, 5)) < 0
        assert runner(sleeper(d, time.monotonic() + 5, 0.001)) > 0
