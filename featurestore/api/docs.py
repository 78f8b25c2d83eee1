"""JSON Schemas and OpenAPI operations of the join and push API (``/docs``).

The hot path decodes with msgspec, not pydantic: the request schemas are generated from
the decoder's own structs (``json_codec.request_schemas``), the responses are spelled
out here; ``tests/integration/test_http_api.py`` checks them against real responses and
``tests/integration/test_openapi.py`` runs schemathesis against a real server.
"""

from __future__ import annotations

from typing import Any

from featurestore.api import json_codec
from featurestore.api.statuses import NAMES
from featurestore.model import DType

_JOIN_BODY, _PUSH_BODY = json_codec.request_schemas()

# The request schemas are the decoder's (json_codec's structs), plus the rules of the
# join that concern the body alone but that the engine checks, not the decoder: a
# reference's form ('view:feature', names as definitions allow them) and one of
# features or feature_service.
_NAME = "[A-Za-z_][A-Za-z0-9_]{0,127}"
JOIN_REQUEST_SCHEMA: dict[str, Any] = {
    **_JOIN_BODY,
    "title": "JoinRequest",
    "properties": {
        **_JOIN_BODY["properties"],
        "features": {
            **_JOIN_BODY["properties"]["features"],
            "items": {"type": "string", "pattern": f"^{_NAME}:{_NAME}$"},
        },
        "request_data": {
            "type": "object",
            "description": "Fields derived features read from the caller (their view's request_schema), "
            "one value per entity row; a missing or mistyped field a requested feature needs is a 400 naming it.",
            "additionalProperties": {
                "type": "array",
                "items": {"type": ["number", "integer", "string", "boolean", "null"]},
            },
            "example": {"item_price": [5.0, 75.0]},
        },
    },
    "oneOf": [
        {
            "required": ["features"],
            "properties": {"features": {"minItems": 1}, "feature_service": {"type": "null"}},
        },
        {
            "required": ["feature_service"],
            "properties": {"feature_service": {"type": "string"}, "features": {"maxItems": 0}},
        },
    ],
}
PUSH_REQUEST_SCHEMA: dict[str, Any] = {**_PUSH_BODY, "title": "PushRequest"}

JOIN_RESPONSE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "metadata": {
            "type": "object",
            "properties": {
                "feature_names": {"type": "array", "items": {"type": "string"}},
                "dtypes": {
                    "type": "array",
                    "items": {"type": "string", "enum": [d.value for d in DType]},
                    "description": "Each column's dtype, in feature_names order.",
                },
                "registry_version": {"type": "integer"},
                "trace_id": {"type": "string"},
                "partial": {"type": "boolean", "description": "Some values are UNAVAILABLE."},
            },
        },
        "results": {
            "type": "array",
            "description": "One column per feature_names entry, rows in request order.",
            "items": {
                "type": "object",
                "properties": {
                    "values": {"type": "array", "items": {}},
                    "statuses": {
                        "type": "array",
                        "items": {
                            "type": "string",
                            "enum": list(NAMES),
                        },
                    },
                    "event_timestamps": {
                        "type": "array",
                        "items": {"type": ["string", "null"], "format": "date-time"},
                    },
                },
            },
        },
    },
}

ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "error": {
            "type": "object",
            "properties": {
                "code": {"type": "string", "example": "INVALID_ARGUMENT"},
                "message": {"type": "string"},
                "details": {"type": "array", "items": {"type": "object"}},
            },
        }
    },
}

PUSH_RESPONSE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"rows_written": {"type": "integer"}, "data_version": {"type": "integer"}},
}


# The wording of the 504s, shared with docs/api.md.
JOIN_DEADLINE_TEXT = (
    "The deadline passed before any store was read (also for a join that reads none, derived "
    "features of request fields only: it is not computed). A store that misses the deadline "
    "is not an error: its values are UNAVAILABLE in a 200 with metadata.partial true"
)
PUSH_DEADLINE_TEXT = (
    "The online store did not confirm the write within the deadline; some rows may have "
    "been written (a push is an upsert, so repeating it is safe)"
)


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": ERROR_SCHEMA}}}


def _header(description: str) -> dict[str, Any]:
    return {"description": description, "schema": {"type": "string"}}


_WWW_AUTHENTICATE = {"WWW-Authenticate": _header("Bearer, with the error and the scope wanted (RFC 6750)")}
# With auth.tokens_file set (docs/security.md): a bearer token with the route's scope.
# No security scheme is declared: whether tokens are asked for is the deployment's choice.
AUTH_RESPONSES: dict[int | str, dict[str, Any]] = {
    "401": {
        **_error("Tokens are configured and the request has none, or one not known"),
        "headers": _WWW_AUTHENTICATE,
    },
    "403": {**_error("The token lacks the route's scope"), "headers": _WWW_AUTHENTICATE},
}
JOIN_SHED_RESPONSE: dict[str, Any] = {
    **_error(
        "The worker is overloaded and shed the join before reading any store (details: reason, "
        "retry_after_seconds); retry after Retry-After seconds"
    ),
    "headers": {"Retry-After": _header("Seconds to wait before retrying")},
}

DEADLINE_PARAMETER: dict[str, Any] = {
    "name": "x-featurestore-deadline-ms",
    "in": "header",
    "required": False,
    "schema": {"type": "integer", "minimum": 1, "maximum": 60000},
    "description": "Milliseconds (1..60000) for this request; lowers the server's configured "
    "deadline, never raises it",
}

JOIN_OPERATION: dict[str, Any] = {
    "summary": "Join feature values for a batch of entity rows",
    "operationId": "join",
    "parameters": [
        DEADLINE_PARAMETER,
        {
            "name": "traceparent",
            "in": "header",
            "required": False,
            "schema": {"type": "string"},
            "description": "W3C trace context of the caller",
        },
    ],
    "requestBody": {"required": True, "content": {"application/json": {"schema": JOIN_REQUEST_SCHEMA}}},
    "responses": {
        "200": {
            "description": "Columnar feature values (Arrow IPC stream when Accept asks for it)",
            "content": {
                "application/json": {"schema": JOIN_RESPONSE_SCHEMA},
                "application/vnd.apache.arrow.stream": {},
            },
        },
        "400": _error("Malformed request"),
        "404": _error("Unknown feature, view or service"),
        "413": _error("Over the row or body limit"),
        **AUTH_RESPONSES,
        "503": JOIN_SHED_RESPONSE,
        "504": _error(JOIN_DEADLINE_TEXT),
    },
}

# The push route's responses and body: FastAPI documents the route, but the handler
# reads the body itself (no pydantic model to describe it).
PUSH_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "Rows written", "content": {"application/json": {"schema": PUSH_RESPONSE_SCHEMA}}},
    400: _error("Malformed rows; names the column"),
    404: _error("Unknown feature view"),
    413: _error("Over the row or body limit"),
    415: _error("A content type other than application/json (none is read as JSON); names it"),
    **AUTH_RESPONSES,
    "403": {
        **_error(
            "The token lacks the route's scope (with WWW-Authenticate), or the request carries "
            "another site's Origin, whatever the token (details reason cross_site; docs/security.md)"
        ),
        "headers": _WWW_AUTHENTICATE,
    },
    503: _error(
        "The online store failed the write, or this server has not switched to a "
        "newly published data version yet (retry shortly)"
    ),
    504: _error(PUSH_DEADLINE_TEXT),
}
PUSH_OPENAPI_EXTRA: dict[str, Any] = {
    "parameters": [DEADLINE_PARAMETER],
    "requestBody": {"required": True, "content": {"application/json": {"schema": PUSH_REQUEST_SCHEMA}}},
}
