"""The lineage page: ``GET /lineage`` on the HTTP port, beside ``/graphql``.

Static files shipped in the package (``lineage/web/``: the page, its script and style,
and Cytoscape.js 3.34.4 vendored from npm with its licence; no CDN), read once at start
and served from memory. The page reads only the GraphQL API (docs/lineage.md).
"""

from __future__ import annotations

import hashlib
from importlib import resources
from typing import Any

TYPES = {
    ".html": b"text/html; charset=utf-8",
    ".js": b"text/javascript; charset=utf-8",
    ".css": b"text/css; charset=utf-8",
    ".png": b"image/png",
}
PREFIX = "/lineage"
# the service's error body (featurestore/errors.py); no name of the asset asked for in it
NOT_FOUND = b'{"error":{"code":"NOT_FOUND","message":"no such lineage page asset","details":[]}}'
# Everything comes from this origin (scripts never inline): an injected script or a framing
# page gets nothing. Inline styles stay allowed: Cytoscape.js sets them on its canvas.
CSP = b"default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"


def _assets() -> dict[str, tuple[bytes, bytes]]:
    """url path -> (content type, body) for every servable file under lineage/web."""
    out: dict[str, tuple[bytes, bytes]] = {}
    web = resources.files("lineage") / "web"
    stack = [(web, "")]
    while stack:
        folder, prefix = stack.pop()
        for item in folder.iterdir():
            if item.is_dir():
                stack.append((item, f"{prefix}{item.name}/"))
                continue
            suffix = "." + item.name.rpartition(".")[2]
            if suffix in TYPES:
                out[f"{PREFIX}/{prefix}{item.name}"] = (TYPES[suffix], item.read_bytes())
    out[PREFIX] = out[f"{PREFIX}/index.html"]
    return out


class LineagePage:
    """ASGI app for /lineage and /lineage/{asset}."""

    def __init__(self) -> None:
        self.assets = _assets()
        # no-cache means "ask again": with an ETag the answer is a 304, not Cytoscape's 400 kB
        self.etags = {
            p: b'"%s"' % hashlib.sha256(body).hexdigest()[:32].encode()
            for p, (_, body) in self.assets.items()
        }

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        path = scope["path"].rstrip("/") or "/"
        found = self.assets.get(path)
        extra: list[tuple[bytes, bytes]] = []
        if found is None or scope["method"] not in ("GET", "HEAD"):
            status, ctype, body = 404, b"application/json", NOT_FOUND
        else:
            status, (ctype, body) = 200, found
            extra.append((b"etag", self.etags[path]))
            asked = dict(scope.get("headers") or ()).get(b"if-none-match", b"")
            if self.etags[path] in asked.split(b", "):
                status, body = 304, b""
        headers = [
            (b"content-type", ctype),
            (b"content-length", str(len(body)).encode()),
            (b"cache-control", b"no-cache"),
            (b"x-content-type-options", b"nosniff"),
            (b"content-security-policy", CSP),
            *extra,
        ]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body})
