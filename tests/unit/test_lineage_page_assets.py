"""The lineage page's static route, driven as the ASGI app it is (lineage/page.py)."""

from __future__ import annotations

import json
from typing import Any

from lineage.page import LineagePage


async def get(
    path: str, method: str = "GET", headers: list[tuple[bytes, bytes]] | None = None
) -> tuple[int, dict[bytes, bytes], bytes]:
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "path": path, "method": method, "headers": headers or []}
    await LineagePage()(scope, None, send)
    return sent[0]["status"], dict(sent[0]["headers"]), sent[1]["body"]


async def test_an_unknown_or_traversing_asset_is_the_services_404_error_body() -> None:
    for path in (
        "/lineage/no-such.js",
        "/lineage/../../etc/passwd",
        "/lineage/%2e%2e/page.py",
        "/lineage/vendor",
    ):
        status, headers, body = await get(path)
        assert status == 404 and headers[b"content-type"] == b"application/json", path
        assert json.loads(body)["error"]["code"] == "NOT_FOUND", path


async def test_the_page_forbids_other_origins_scripts_and_framing() -> None:
    status, headers, _ = await get("/lineage/")
    assert status == 200 and headers[b"content-type"] == b"text/html; charset=utf-8"
    csp = headers[b"content-security-policy"].decode()
    assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert headers[b"x-content-type-options"] == b"nosniff"


async def test_a_revalidated_asset_is_a_304_without_its_body() -> None:
    status, headers, body = await get("/lineage/vendor/cytoscape.min.js")
    assert status == 200 and len(body) > 100_000 and headers[b"cache-control"] == b"no-cache"
    status, _, body = await get(
        "/lineage/vendor/cytoscape.min.js", headers=[(b"if-none-match", headers[b"etag"])]
    )
    assert status == 304 and body == b""
    status, _, body = await get("/lineage/vendor/cytoscape.min.js", headers=[(b"if-none-match", b'"other"')])
    assert status == 200 and len(body) > 100_000
