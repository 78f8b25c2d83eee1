"""A body sent with a content-encoding (gzip...) is refused naming the coding, on every
way a join or a push comes in; none is decoded (docs/api.md)."""

from __future__ import annotations

import asyncio
import gzip
import json
from collections.abc import AsyncIterator

import pytest

from featurestore.api.connections import ConnectionGuard
from featurestore.api.routes import JOIN_PATH, PUSH_PATH
from tests.support import guarded_uvicorn
from tests.unit.test_api_edges import client, http_api, make_engine
from tests.unit.test_caller_gone import GUARD, LIMITS

JOIN = json.dumps({"entities": {"user_id": [1]}, "features": ["fast:a"]}).encode()
PUSH = json.dumps({"feature_view": "fast", "rows": {"user_id": [1], "a": [2]}}).encode()


@pytest.fixture
async def port() -> AsyncIterator[int]:
    """A real uvicorn under the connection guard: joins take the direct cycle."""
    api = http_api(make_engine())
    async with guarded_uvicorn(api, ConnectionGuard(LIMITS, direct=api.direct())) as port:
        yield port


async def exchange(port: int, path: str, body: bytes, coding: str, version: str = "1.1") -> tuple[int, bytes]:
    head = f"POST {path} HTTP/{version}\r\nhost: t\r\ncontent-length: {len(body)}\r\ncontent-encoding: {coding}\r\n"
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(head.encode() + b"connection: close\r\n\r\n" + body)
    raw = await asyncio.wait_for(reader.read(), GUARD)
    writer.close()
    status = int(raw.split(b" ", 2)[1])
    return status, raw.partition(b"\r\n\r\n")[2]


@pytest.mark.parametrize("version", ["1.1", "1.0"])  # the direct cycle, and ASGI's join
@pytest.mark.parametrize(("path", "body"), [(JOIN_PATH, JOIN), (PUSH_PATH, PUSH)])
async def test_a_gzipped_body_is_a_400_naming_the_coding(
    port: int, path: str, body: bytes, version: str
) -> None:
    status, answer = await exchange(port, path, gzip.compress(body), "gzip", version)
    assert status == 400
    error = json.loads(answer)["error"]
    assert error["code"] == "INVALID_ARGUMENT"
    assert error["message"] == "content-encoding 'gzip' is not supported: send the body uncompressed"


@pytest.mark.parametrize("coding", ["identity", " Identity "])
async def test_identity_is_no_coding(port: int, coding: str) -> None:
    assert (await exchange(port, JOIN_PATH, JOIN, coding))[0] == 200


async def test_a_coded_push_is_refused_before_anything_is_written() -> None:
    engine = make_engine()
    await engine.stores["default"].prepare(list(engine.state.definitions.views.values()))
    async with client(http_api(engine)) as c:
        refused = await c.post(PUSH_PATH, content=PUSH, headers={"content-encoding": "br"})
        joined = await c.post(JOIN_PATH, content=JOIN)
    assert refused.status_code == 400 and "'br'" in refused.json()["error"]["message"]
    assert joined.json()["results"][1]["statuses"] == ["NOT_FOUND"]  # (the push wrote nothing)


@pytest.mark.parametrize(
    "codings",
    ["identity, gzip", "gzip\r\ncontent-encoding: identity", "identity\r\ncontent-encoding: gzip"],
)
@pytest.mark.parametrize(("path", "body"), [(JOIN_PATH, JOIN), (PUSH_PATH, PUSH)])
async def test_a_coding_among_several_or_in_a_second_header_is_refused_too(
    port: int, path: str, body: bytes, codings: str
) -> None:
    status, answer = await exchange(port, path, gzip.compress(body), codings)
    assert status == 400 and "content-encoding 'gzip'" in json.loads(answer)["error"]["message"]
