"""The admin listener's app (``http.admin_port``): the operations routes only."""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from featurestore.api.answers import send_error
from featurestore.api.routes import OPS_PATHS
from featurestore.errors import NotFound


class OpsApi:
    """The admin listener's ASGI app: /healthz, /readyz and /metrics of ``app``, nothing
    else, no token."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] not in OPS_PATHS:
            await send_error(send, NotFound(f"the admin port serves {', '.join(OPS_PATHS)} only"))
            return
        await self.app(scope, receive, send)
