"""What bearer-token checks cost on the HTTP join, in-process (benchmarks/http_front.py's
method: each request fed to the guarded uvicorn protocol as one read, CPU time of the
serving thread, runs interleaved).

Three ways, the same batch-1 join of 3 features from the memory store:
``off``: no tokens configured, the request carries no authorization header;
``off+header``: no tokens configured, the request carries one (parsed, not checked);
``on``: tokens configured (3, scoped), the request carries a valid read token.
Reported: the median per way and the medians of the paired differences to ``off``;
and the check alone (``Authenticator.check_http`` on a valid value) by timeit.

    python -m benchmarks.auth --requests 20000 --repeats 7
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import time
import timeit
from collections.abc import Callable

import uvicorn
from pydantic import SecretStr
from uvicorn.server import ServerState

from benchmarks.http_front import BODY, Transport, make_api
from featurestore.api.connections import ConnectionGuard, ConnectionLimits
from featurestore.api.http import HttpApi
from featurestore.auth import READ, Authenticator
from featurestore.config import AuthConfig

TOKEN = "bench-read-token-0123456789abcdef"
TOKENS = f"{TOKEN} read\nbench-write-token-aa write\nbench-admin-token-bb admin\n"


def request(token: str | None) -> bytes:
    auth = b"" if token is None else b"authorization: Bearer %s\r\n" % token.encode()
    return (
        b"POST /v1/feature/join HTTP/1.1\r\nhost: bench\r\ncontent-type: application/json\r\n%s"
        b"content-length: %d\r\n\r\n%s" % (auth, len(BODY), BODY)
    )


async def run(make: Callable[[], asyncio.Protocol], raw: bytes, requests: int) -> float:
    proto = make()
    transport = Transport()
    proto.connection_made(transport)  # type: ignore[arg-type]
    t0 = time.thread_time()
    for _ in range(requests):
        proto.data_received(raw)
        await transport.answered.wait()
        transport.answered.clear()
    elapsed = time.thread_time() - t0
    proto.connection_lost(None)
    return elapsed / requests


def protocol_of(api: HttpApi) -> Callable[[], asyncio.Protocol]:
    guard = ConnectionGuard(ConnectionLimits(75, 10, 30, 16384, 1000), direct=api.direct())  # as served
    config: uvicorn.Config = guard.uvicorn_config(api, access_log=False)
    config.load()
    state = ServerState()
    return lambda: guard.protocol(config=config, server_state=state, app_state={})


async def main(requests: int, repeats: int) -> None:
    plain = await make_api()
    secured = await make_api()
    auth = Authenticator(AuthConfig(tokens=SecretStr(TOKENS)))
    secured.auth = auth
    ways = {
        "off": (protocol_of(plain), request(None)),
        "off+header": (protocol_of(plain), request(TOKEN)),
        "on": (protocol_of(secured), request(TOKEN)),
    }
    runs: dict[str, list[float]] = {name: [] for name in ways}
    order = list(ways)
    for _ in range(repeats):
        for name in order:
            gc.collect()
            make, raw = ways[name]
            runs[name].append(await run(make, raw, requests))
        order.reverse()
    for name, seconds in runs.items():
        line = f"{name:10s} median {statistics.median(seconds) * 1e6:7.2f} us/request, best {min(seconds) * 1e6:7.2f}"
        if name != "off":
            paired = statistics.median(s - b for s, b in zip(seconds, runs["off"], strict=True))
            line += f"; paired difference to off, median {paired * 1e6:+.2f} us"
        print(line)
    value = f"Bearer {TOKEN}".encode()
    n = 1_000_000
    check = min(timeit.repeat(lambda: auth.check_http(value, READ, "/j"), number=n, repeat=5)) / n
    allowed = auth.table.http[READ]
    lookup = min(timeit.repeat(lambda: value in allowed, number=n, repeat=5)) / n  # type: ignore[operator]
    print(f"check_http (valid token) {check * 1e9:.0f} ns; the set lookup alone {lookup * 1e9:.0f} ns")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--requests", type=int, default=20_000)
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    import uvloop

    uvloop.run(main(args.requests, args.repeats))
