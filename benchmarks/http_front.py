"""The HTTP front in-process: CPU per request of uvicorn plus the join endpoint, as
featurestore configured uvicorn before the connection guard (its httptools protocol,
uvicorn's defaults) and as it does now (``featurestore/api/connections.py``).

Each request is fed to a protocol as one read (``data_received``) and run to its last
response byte on the event loop; the transport is a stand-in that keeps the bytes, so
no socket or load generator shares the CPU and the numbers hold on a busy machine. The
join is a batch-1 join of 3 features from the memory store. Runs of ``--requests``
requests alternate between the protocols ``--repeats`` times in one process, timed in
CPU time of the serving thread (``time.thread_time``); reported: the median and best
run per protocol, and the median of the paired differences (each guarded run minus the
plain run next to it), which cancels the drift of a shared machine.

    python -m benchmarks.http_front --requests 20000 --repeats 7
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import inspect
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa
import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState

from featurestore.api.http import HttpApi
from featurestore.definitions.snapshot import new_snapshot
from featurestore.health import Readiness
from featurestore.join import JoinEngine, Limits
from featurestore.model import DType, Entity, Feature, FeatureView, make_definitions
from featurestore.plan import ServingState
from featurestore.push import PushService, to_table
from featurestore.sources.memory import MemorySource

BODY = b'{"entities":{"user_id":[17]},"features":["profile:age","profile:country","profile:score"]}'
REQUEST = (
    b"POST /v1/feature/join HTTP/1.1\r\nhost: bench\r\ncontent-type: application/json\r\n"
    b"content-length: %d\r\n\r\n%s" % (len(BODY), BODY)
)


class Transport:
    """Enough of an asyncio transport for uvicorn's protocol; counts completed responses."""

    def __init__(self) -> None:
        self.answered = asyncio.Event()

    def write(self, data: bytes) -> None:
        if data.endswith(b"}"):  # the JSON body: the last write of a response
            self.answered.set()

    def writelines(self, parts: Any) -> None:
        for data in parts:
            self.write(data)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 40000), "sockname": ("127.0.0.1", 8080)}.get(name, default)

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def make_api() -> HttpApi:
    user = Entity("user_id", DType.INT64)
    view = FeatureView(
        "profile",
        (user,),
        (Feature("age", DType.INT64), Feature("country", DType.STRING), Feature("score", DType.FLOAT64)),
    )
    store = MemorySource("default")
    defs = make_definitions("bench", [user], [view], [])
    engine = JoinEngine({"default": store}, ServingState(new_snapshot(defs, 1)), Limits(1000, 5.0))
    n = 1000
    columns = {
        "user_id": list(range(n)),
        "age": list(range(n)),
        "country": ["DE"] * n,
        "score": np.linspace(0, 1, n).tolist(),
    }
    table: pa.Table = to_table(view, columns, n, defs.entities)
    await store.write(view, table, 0)
    return HttpApi(
        engine, PushService(engine), lambda: Readiness(True), max_body_bytes=1 << 20, deadline_ms=500
    )


async def run(make: Callable[[], asyncio.Protocol], requests: int) -> float:
    """CPU seconds per request, for ``requests`` requests on one keep-alive connection."""
    proto = make()
    transport = Transport()
    proto.connection_made(transport)  # type: ignore[arg-type]
    t0 = time.thread_time()  # CPU time of this thread: a busy machine's other work is not counted
    for _ in range(requests):
        proto.data_received(REQUEST)
        await transport.answered.wait()
        transport.answered.clear()
    elapsed = time.thread_time() - t0
    proto.connection_lost(None)
    return elapsed / requests


async def main(requests: int, repeats: int) -> None:
    api = await make_api()
    state = ServerState()
    # uvicorn as featurestore served it before the guard: its httptools protocol and defaults
    plain = uvicorn.Config(api, http="httptools", loop="none", lifespan="off", log_config=None)
    plain.load()
    makers: dict[str, Callable[[], asyncio.Protocol]] = {
        "httptools": lambda: HttpToolsProtocol(config=plain, server_state=state, app_state={})
    }
    try:  # a tree from before the guard has none
        from featurestore.api.connections import ConnectionGuard, ConnectionLimits
    except ImportError:
        ConnectionGuard = None  # type: ignore[assignment,misc]
    if ConnectionGuard is not None:
        guard = ConnectionGuard(ConnectionLimits(75, 10, 30, 16384, 1000))
        guarded = guard.uvicorn_config(api, access_log=False)  # as featurestore serves it
        guarded.load()
        makers["guarded"] = lambda: guard.protocol(config=guarded, server_state=state, app_state={})
        if "direct" in inspect.signature(ConnectionGuard).parameters:  # (a tree from before it: none)
            direct = ConnectionGuard(ConnectionLimits(75, 10, 30, 16384, 1000), direct=api.direct())
            answered = direct.uvicorn_config(api, access_log=False)  # as featurestore serves it now
            answered.load()
            makers["direct"] = lambda: direct.protocol(config=answered, server_state=state, app_state={})
    runs: dict[str, list[float]] = {name: [] for name in makers}
    order = list(makers)
    for _ in range(repeats):  # interleaved, so drift on a shared machine hits both alike
        for name in order:
            gc.collect()
            runs[name].append(await run(makers[name], requests))
        order.reverse()  # neither goes first every time
    base = runs["httptools"]
    for name, seconds in runs.items():
        line = f"{name:10s} median {statistics.median(seconds) * 1e6:7.2f} us/request, best {min(seconds) * 1e6:7.2f}"
        if name != "httptools":
            paired = statistics.median(s - b for s, b in zip(seconds, base, strict=True))
            line += f"; paired difference to httptools, median {paired * 1e6:+.2f} us"
        print(line)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--requests", type=int, default=20_000)
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    import uvloop

    uvloop.run(main(args.requests, args.repeats))
