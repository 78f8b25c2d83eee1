"""Experiment (issue 16, requirement 3): featurestore's HTTP API served by granian (a Rust
HTTP server) instead of uvicorn with httptools, the same ``HttpApi`` behind it.

An ASGI app whose lifespan builds the serving runtime from ``FEATURESTORE_CONFIG``, as
``featurestore serve`` does for one worker (no gRPC, no connection guard: what is
compared is the HTTP server under the same app). benchmarks/http_servers.py starts it:

    FEATURESTORE_CONFIG=server.yaml granian --interface asgi --workers 2 --loop uvloop \\
        benchmarks.granian_app:app
"""

from __future__ import annotations

import gc
import os
from typing import Any

from featurestore.api.http import HttpApi
from featurestore.config import load_config
from featurestore.push import PushService
from featurestore.runtime import Runtime, build_runtime


class App:
    def __init__(self) -> None:
        self.api: HttpApi | None = None
        self.rt: Runtime | None = None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        assert self.api is not None
        await self.api(scope, receive, send)

    async def _lifespan(self, receive: Any, send: Any) -> None:
        while True:
            msg = await receive()
            if msg["type"] == "lifespan.startup":
                config = load_config(os.environ["FEATURESTORE_CONFIG"])
                self.rt = rt = await build_runtime(config)
                self.api = HttpApi(
                    rt.engine, PushService(rt.engine), rt.readiness,
                    max_body_bytes=config.limits.max_body_bytes, deadline_ms=config.limits.deadline_ms,
                )  # fmt: skip
                gc.collect()
                gc.freeze()
                await send({"type": "lifespan.startup.complete"})
            elif msg["type"] == "lifespan.shutdown":
                if self.rt is not None:
                    await self.rt.close()
                await send({"type": "lifespan.shutdown.complete"})
                return


app = App()
