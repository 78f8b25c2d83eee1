"""A join's store-read deadline: ``asyncio.timeout`` (one loop timer armed and cancelled
per request, what served before) against ``featurestore.deadlines`` (one timer for all
of a loop's requests, what serves).

Two measurements, on uvloop as the server runs:

1. alone: a coroutine awaits a future that a loop callback completes (a store's reply),
   under each deadline, ``--number`` times, alternating, CPU time of the thread; the
   figure is the cost per request over the bare await;
2. in the serving path: the demo server's HTTP path in process (``benchmarks.derived_cpu``'s
   harness: connection guard, uvicorn protocol, HTTP API, join, JSON; memory stores),
   ranker_v1 at batch 1 and 100, with the engine's deadline swapped to a wrapper around
   ``asyncio.timeout`` for one of two connections, requests alternating; CPU per request.

    python -m benchmarks.deadlines [--number 200000] [--requests 20000]

Writes benchmarks/results/deadlines.md (stitched into RESULTS.md).
"""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path
from typing import Any

from benchmarks import derived_cpu, report
from benchmarks.run import log
from featurestore import join
from featurestore.deadlines import Deadlines
from featurestore.demo.data import FEATURE_REFS, ensure_demo_data
from featurestore.errors import DeadlineExceeded

HERE = Path(__file__).resolve().parent


async def alone(number: int) -> dict[str, float]:
    loop = asyncio.get_running_loop()
    sweep = Deadlines()

    async def reply() -> None:
        fut = loop.create_future()
        loop.call_soon(fut.set_result, None)
        await fut

    async def bare() -> None:
        await reply()

    async def timer() -> None:
        async with asyncio.timeout(0.5):
            await reply()

    async def swept() -> None:
        with sweep.guard(time.monotonic() + 0.5):
            await reply()

    spent = {"bare": 0.0, "asyncio.timeout": 0.0, "featurestore.deadlines": 0.0}
    fns = {"bare": bare, "asyncio.timeout": timer, "featurestore.deadlines": swept}
    for _ in range(10):  # rounds, each variant in turn
        for name, fn in fns.items():
            t0 = time.thread_time()
            for _ in range(number // 10):
                await fn()
            spent[name] += time.thread_time() - t0
    bare_us = spent["bare"] / number * 1e6
    return {name: round(s / number * 1e6 - bare_us, 2) for name, s in spent.items() if name != "bare"}


async def serving(data: Path, requests: int) -> dict[str, Any]:
    make = await derived_cpu.serving_protocol(data)
    out: dict[str, Any] = {}
    for batch in (1, 100):
        bodies = derived_cpu.requests(list(FEATURE_REFS), batch)
        a, b = derived_cpu.Connection(make), derived_cpu.Connection(make)
        swept, timed = 0.0, 0.0
        original = join.JoinEngine._fan_out
        n = requests if batch == 1 else requests // 10
        pool, half = len(bodies), len(bodies) // 2
        for i in range(pool + n):  # the first pass warms both
            # the two requests of a pair ask different keys (none warms the other's), and
            # take turns going first
            for timer in (True, False) if i % 2 else (False, True):
                if timer:
                    join.JoinEngine._fan_out = _timer_fan_out  # type: ignore[method-assign]
                    try:
                        t = await a.request(bodies[i % pool])
                    finally:
                        join.JoinEngine._fan_out = original  # type: ignore[method-assign]
                    timed += t if i >= pool else 0.0
                else:
                    s = await b.request(bodies[(i + half) % pool])
                    swept += s if i >= pool else 0.0
        out[str(batch)] = {"timer_us": round(timed / n * 1e6, 1), "swept_us": round(swept / n * 1e6, 1)}
        log(f"deadlines b={batch}: {out[str(batch)]}")
    return out


async def _timer_fan_out(self: Any, by_store: Any, n_views: int, deadline: float, span: Any) -> Any:
    """JoinEngine._fan_out's one-store path as it was: ``asyncio.timeout``."""
    assert len(by_store) == 1, "ranker_v1 reads one store in the demo"
    name, items = next(iter(by_store.items()))
    reads: list[Any] = [None] * n_views
    try:
        async with asyncio.timeout(deadline - time.monotonic()):
            results = await self._read_store(name, items, span)
    except TimeoutError:
        late = DeadlineExceeded(f"store {name!r} missed the deadline")
        results = self._failed(name, [q for _, q in items], late, "deadline")
    for (slot, _), r in zip(items, results, strict=True):
        reads[slot] = r
    return reads


def render(micro: dict[str, float], path: dict[str, Any], command: str) -> list[str]:
    lines = [
        "## Request deadlines: one loop timer per request against one per loop",
        "",
        f"* Run: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; command: `{command}`",
        "* uvloop; CPU time of the serving thread. Alone: a future completed by a loop callback, awaited",
        "  under each deadline, the bare await subtracted. Serving path: the demo server's HTTP path in",
        "  process (benchmarks.derived_cpu's harness), ranker_v1, one request of each variant in turn.",
        "",
        "| measurement | asyncio.timeout | featurestore.deadlines |",
        "|---|---:|---:|",
        f"| alone, µs per request over a bare await | {micro['asyncio.timeout']:.2f} "
        f"| {micro['featurestore.deadlines']:.2f} |",
    ]
    for batch, v in path.items():
        lines.append(
            f"| serving path, batch {batch}, CPU µs per request | {v['timer_us']:,.1f} | {v['swept_us']:,.1f} "
            f"({100 * (v['swept_us'] / v['timer_us'] - 1):+.1f}%) |"
        )
    return lines


async def main(a: argparse.Namespace) -> None:
    data = a.out / "data"
    ensure_demo_data(data)
    micro = await alone(a.number)
    log(f"deadlines alone: {micro}")
    path = await serving(data, a.requests)
    command = f"python -m benchmarks.deadlines --number {a.number} --requests {a.requests}"
    report.publish("deadlines.md", render(micro, path, command))


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--number", type=int, default=200_000, help="awaits per variant, alone")
    ap.add_argument("--requests", type=int, default=20_000, help="request pairs at batch 1 (a tenth at 100)")
    ap.add_argument("--out", type=Path, default=HERE / "out")
    import uvloop

    uvloop.run(main(ap.parse_args()))
