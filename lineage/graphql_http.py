"""/graphql's HTTP side: the request body, and every refusal before GraphQL answered
with the service's JSON error body (featurestore/errors.py's shape, built here: lineage
does not import featurestore.api).

strawberry answers its transport errors (an unsupported content type, a body that is not
JSON, a batch, no query, variables that are not an object, an unknown operation) with a
``text/plain`` 400, and calls ``.get`` on whatever JSON the body held, so ``null``, ``1``
or a query sent as a bare JSON string were a 500 with a traceback, as were a body that is
not UTF-8 and JSON nested past the interpreter's recursion limit (review s53 F1, F3).
"""

from __future__ import annotations

import json
from typing import Any

from cross_web import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from strawberry.asgi import GraphQL
from strawberry.http.parse_content_type import parse_content_type
from strawberry.types.unset import UNSET

from lineage.graphql_budget import MAX_BODY_BYTES

JSON_WHITESPACE = b" \t\r\n"
# the codes of the statuses strawberry refuses with (featurestore/api/errors.py HTTP_STATUS)
_CODES = {404: "NOT_FOUND"}


def error_response(status: int, message: str) -> Response:
    """The service's JSON error: ``{"error": {"code", "message", "details"}}``."""
    error = {"code": _CODES.get(status, "INVALID_ARGUMENT"), "message": message, "details": []}
    body = json.dumps({"error": error}, separators=(",", ":"), ensure_ascii=False)
    return Response(body.encode("utf-8", "backslashreplace"), status, media_type="application/json")


def _kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a JSON boolean"
    if isinstance(value, str):
        return 'a JSON string (the query text alone? send {"query": "..."})'
    return "a JSON number"


class GraphQLTransport(GraphQL):
    """strawberry's ASGI view with the body checked and its HTTP errors re-answered.
    ``max_body_bytes``: the body limit the HTTP front applies to this mount."""

    max_body_bytes = MAX_BODY_BYTES

    async def run(  # type: ignore[override]
        self, request: Request, context: Any = UNSET, root_value: Any = UNSET
    ) -> Response:
        try:
            return await super().run(request, context, root_value)
        except HTTPException as e:
            return error_response(e.status_code, e.reason)

    def decode_json(self, data: str | bytes) -> object:
        """A body's JSON, or a GET parameter's. strawberry turns only a JSONDecodeError
        into a 400 (that names neither the error nor where it is); the others were a 500."""
        if isinstance(data, bytes):
            try:
                data = data.decode("utf-8")  # json.loads would also guess UTF-16 and UTF-32
            except UnicodeDecodeError as e:
                raise HTTPException(
                    400, f"the body is not UTF-8: byte 0x{e.object[e.start]:02x} at offset {e.start}"
                ) from None
        try:
            return json.loads(data)
        except RecursionError:
            raise HTTPException(400, "malformed JSON: nested too deeply") from None
        except ValueError as e:  # JSONDecodeError, and an integer past 4,300 digits (int's limit)
            raise HTTPException(400, f"malformed JSON: {str(e)[:200]}") from None

    async def parse_http_body(self, request: Any) -> Any:
        """A JSON body must hold an object (a batch, a list, strawberry refuses). The
        first byte tells which, without decoding the body twice."""
        content_type, _ = parse_content_type(request.content_type or "")
        if request.method == "POST" and "application/json" in content_type:
            body = await request.get_body()  # kept: strawberry's read of it gets the same
            if body.lstrip(JSON_WHITESPACE)[:1] not in (b"{", b"["):
                value = self.parse_json(body)  # its 400 for what is not JSON at all
                raise HTTPException(
                    400, f'the body must be a JSON object {{"query": ...}}, not {_kind(value)}'
                )
        return await super().parse_http_body(request)
