"""A caller that leaves while its HTTP join runs cancels the join, as a gRPC caller's
cancel does: its admission and rows are released at once and it counts as CANCELLED,
instead of running to its deadline for nobody and counting as answered. Both ways a join
is served over HTTP: the direct cycle (a plain request) and ASGI (here: HTTP/1.0)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest

from featurestore.api.connections import ConnectionGuard, ConnectionLimits
from featurestore.api.routes import JOIN_PATH
from featurestore.overload import LoadShedder
from tests.support import eventually, guarded_uvicorn
from tests.unit.test_api_edges import counts, frozen, http_api, make_engine

LIMITS = ConnectionLimits(
    keep_alive=5, header_timeout=5, body_timeout=5, max_header_bytes=16384, max_connections=100
)
GUARD = 30  # seconds; only turns a hang into a failure (the join's deadline is 60 s)
BODY = json.dumps({"entities": {"user_id": list(range(1, 9))}, "features": ["slow:x"]}).encode()
HEADS = {
    "direct": b"POST /v1/feature/join HTTP/1.1\r\nhost: t\r\ncontent-length: %d\r\n\r\n",
    "asgi": b"POST /v1/feature/join HTTP/1.0\r\nhost: t\r\ncontent-length: %d\r\n\r\n",
}
REQUESTS = {way: head % len(BODY) + BODY for way, head in HEADS.items()}


@pytest.fixture
async def server() -> AsyncIterator[tuple[LoadShedder, asyncio.Event, int]]:
    engine = make_engine(deadline_seconds=60)
    api = http_api(engine, deadline_ms=60_000)
    shedder = api.join.shedder = LoadShedder(1024, 0.005)
    guard = ConnectionGuard(LIMITS, direct=api.direct())
    async with guarded_uvicorn(api, guard, timeout_graceful_shutdown=5) as port:
        yield shedder, frozen(engine).entered, port


@pytest.mark.parametrize("way", list(REQUESTS))
async def test_a_join_whose_caller_left_is_cancelled_releasing_its_admission_and_counted_cancelled(
    server: tuple[LoadShedder, asyncio.Event, int], way: str
) -> None:
    shedder, store_entered, port = server
    before = {o: counts(JOIN_PATH, "http", o) for o in ("CANCELLED", "partial", "ok")}
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(REQUESTS[way])
    await asyncio.wait_for(store_entered.wait(), GUARD)  # the join waits on the frozen store
    assert (shedder.inflight, shedder.rows.rows) == (1, 8)
    writer.close()  # the caller gives up
    await eventually(lambda: shedder.inflight == 0, GUARD, "the admission released")
    assert shedder.rows.rows == 0
    after = {o: counts(JOIN_PATH, "http", o) for o in before}
    assert after["CANCELLED"] == (before["CANCELLED"][0] + 1, before["CANCELLED"][1] + 1)
    assert after["partial"] == before["partial"] and after["ok"] == before["ok"]
