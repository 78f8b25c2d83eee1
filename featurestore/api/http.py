"""HTTP API: FastAPI for the documented surface, a direct ASGI path for the join.

``POST /v1/feature/join`` is the hot path, so :class:`HttpApi` answers it straight
from the ASGI scope (no routing table, middleware stack or pydantic pass) and hands
every other request to the FastAPI app; the join's OpenAPI operation is added to the
spec FastAPI generates (``docs.JOIN_OPERATION``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from opentelemetry.trace import Span
from starlette.exceptions import HTTPException as StarletteHTTPException

from featurestore import __version__, metrics, tracing
from featurestore.api import arrow_codec, json_codec
from featurestore.api.docs import (
    ERROR_SCHEMA,
    JOIN_OPERATION,
    PUSH_DEADLINE_TEXT,
    PUSH_REQUEST_SCHEMA,
    PUSH_RESPONSE_SCHEMA,
)
from featurestore.api.errors import HTTP_STATUS, internal_error
from featurestore.api.outcome import Outcomes
from featurestore.definitions.snapshot import definitions_to_dict
from featurestore.errors import FeatureStoreError, InvalidArgument, LimitExceeded
from featurestore.health import ReadinessProbe
from featurestore.join import JoinEngine
from featurestore.push import PushService

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

JOIN_PATH = "/v1/feature/join"
PUSH_PATH = "/v1/feature/push"
JSON = b"application/json"
_MAX_DEADLINE_MS = 60_000


class JoinEndpoint:
    """Body bytes + a few headers in, (status, content type, body) out. Never raises."""

    def __init__(self, engine: JoinEngine, deadline_ms: int) -> None:
        self.engine = engine
        self.deadline_ms = deadline_ms
        self.outcomes = Outcomes(JOIN_PATH, "http")

    async def __call__(
        self, body: bytes, accept: bytes | None, traceparent: str | None, deadline_ms: bytes | None
    ) -> tuple[int, bytes, bytes]:
        t0 = time.perf_counter()
        span = tracing.start_request_span("POST " + JOIN_PATH, traceparent)
        trace_id = tracing.trace_id_hex(span)
        try:
            deadline = time.monotonic() + self._deadline(deadline_ms) / 1000.0
            req = json_codec.decode_join(body)
            result = await self.engine.join(req, deadline, span)
            if accept is not None and arrow_codec.MEDIA_TYPE.encode() in accept:
                out, ctype = (
                    arrow_codec.encode_join_arrow(result, trace_id),
                    arrow_codec.MEDIA_TYPE.encode(),
                )
            else:
                out, ctype = json_codec.encode_join(result, trace_id), JSON
        except FeatureStoreError as e:
            return self._error(e, t0, span, e)
        except Exception as e:
            log.exception("join failed")
            return self._error(internal_error(e), t0, span, e)
        except asyncio.CancelledError:
            # Shutdown gave up on the request (uvicorn's graceful timeout): count it,
            # or the request counter and the histogram would both miss it.
            self.outcomes.cancelled(t0)
            raise
        finally:
            span.end()
        self.outcomes.succeeded(t0, result.partial)
        return 200, ctype, out

    def _deadline(self, header: bytes | None) -> int:
        """Milliseconds this join may take: the configured deadline, or the header's
        value when that is sooner. A client may shorten its own wait, never lengthen
        the server's (that bound is what keeps a slow store from piling up requests)."""
        if header is None:
            return self.deadline_ms
        try:
            ms = int(header)
        except ValueError:
            raise InvalidArgument(
                "x-featurestore-deadline-ms must be an integer number of milliseconds"
            ) from None
        if not 0 < ms <= _MAX_DEADLINE_MS:
            raise InvalidArgument(f"x-featurestore-deadline-ms must be in 1..{_MAX_DEADLINE_MS}")
        return min(ms, self.deadline_ms)

    def _error(
        self, e: FeatureStoreError, t0: float, span: Span, cause: BaseException
    ) -> tuple[int, bytes, bytes]:
        self.outcomes.failed(t0, e, span, cause)
        return HTTP_STATUS[e.code], JSON, json_codec.encode_error(e.to_dict())


class HttpApi:
    """The ASGI application uvicorn serves."""

    def __init__(
        self,
        engine: JoinEngine,
        push: PushService,
        readiness: ReadinessProbe,
        *,
        max_body_bytes: int,
        deadline_ms: int,
        mounts: Mapping[str, ASGIApp] | None = None,
    ) -> None:
        self.max_body_bytes = max_body_bytes
        self.deadline_ms = deadline_ms
        self.join = JoinEndpoint(engine, deadline_ms)
        self.push = push
        self.app = _fastapi_app(engine, readiness, self)
        for path, app in (mounts or {}).items():  # e.g. /graphql (lineage)
            self.app.add_route(path, app, methods=["GET", "POST"], include_in_schema=False)  # type: ignore[arg-type]
        self._inflight = metrics.inflight("http")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == JOIN_PATH:
            if scope["method"] == "POST":
                await self._join(scope, receive, send)
            else:
                await self._method_not_allowed(scope, send)
        else:
            await self.app(scope, receive, send)

    async def _method_not_allowed(self, scope: Scope, send: Send) -> None:
        e = InvalidArgument(f"no route {scope['method']} {JOIN_PATH}: use POST")
        out = json_codec.encode_error(e.to_dict())
        headers = [(b"content-type", JSON), (b"content-length", str(len(out)).encode()), (b"allow", b"POST")]
        await send({"type": "http.response.start", "status": 405, "headers": headers})
        await send({"type": "http.response.body", "body": out})

    async def _join(self, scope: Scope, receive: Receive, send: Send) -> None:
        self._inflight.inc()
        try:
            t0 = time.perf_counter()
            accept = traceparent = deadline = None
            length = -1
            for name, value in scope["headers"]:
                if name == b"content-length":
                    length = int(value) if value.isdigit() else -1
                elif name == b"accept":
                    accept = value
                elif name == b"traceparent":
                    traceparent = value.decode("latin-1")
                elif name == b"x-featurestore-deadline-ms":
                    deadline = value
            body = await self.read_body(receive, length)
            if body is None:
                status, ctype, out = self._too_large(t0)
            else:
                status, ctype, out = await self.join(body, accept, traceparent, deadline)
            await send(
                {
                    "type": "http.response.start",
                    "status": status,
                    "headers": [
                        (b"content-type", ctype),
                        (b"content-length", str(len(out)).encode()),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": out})
        finally:
            self._inflight.dec()

    async def read_body(self, receive: Receive, length: int) -> bytes | None:
        """The whole body, or None once it is known to exceed the limit."""
        limit = self.max_body_bytes
        if length > limit:
            await _drain(receive, 0, limit)
            return None
        chunks: list[bytes] = []
        size = 0
        while True:
            msg = await receive()
            chunk = msg.get("body", b"")
            size += len(chunk)
            if size > limit:
                if msg.get("more_body", False):
                    await _drain(receive, size, limit)
                return None
            chunks.append(chunk)
            if not msg.get("more_body", False):
                break
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def _too_large(self, t0: float) -> tuple[int, bytes, bytes]:
        e = LimitExceeded(
            f"request body exceeds the limit of {self.max_body_bytes} bytes",
            details=[{"limit_bytes": self.max_body_bytes}],
        )
        self.join.outcomes.failed(t0, e)
        return HTTP_STATUS[e.code], JSON, json_codec.encode_error(e.to_dict())


def error_response(e: FeatureStoreError) -> Response:
    return Response(json_codec.encode_error(e.to_dict()), HTTP_STATUS[e.code], media_type="application/json")


async def _drain(receive: Receive, seen: int, limit: int) -> None:
    """Read and discard the rest of an oversized body, up to a bound.

    A server that answers 413 and closes while the client is still sending makes the
    client's kernel see a reset, and most clients then report "connection reset"
    instead of the 413 and its message. Bodies far beyond the limit are not worth
    reading: those get the close."""
    bound = max(limit * _DRAIN_FACTOR, _DRAIN_MIN_BYTES)
    while seen <= bound:
        msg = await receive()
        if msg["type"] != "http.request":
            return
        seen += len(msg.get("body", b""))
        if not msg.get("more_body", False):
            return


_DRAIN_FACTOR = 4
_DRAIN_MIN_BYTES = 16 << 20


def _fastapi_app(engine: JoinEngine, readiness: ReadinessProbe, api: HttpApi) -> FastAPI:
    app = FastAPI(
        title="featurestore",
        version=__version__,
        description="Online feature serving. gRPC: featurestore.v1.FeatureService on the gRPC port.",
    )
    push_outcomes = Outcomes(PUSH_PATH, "http")

    @app.post(
        PUSH_PATH,
        summary="Write rows of one feature view into its current data version",
        responses={
            200: {
                "description": "Rows written",
                "content": {"application/json": {"schema": PUSH_RESPONSE_SCHEMA}},
            },
            400: {
                "description": "Malformed rows; names the column",
                "content": {"application/json": {"schema": ERROR_SCHEMA}},
            },
            404: {
                "description": "Unknown feature view",
                "content": {"application/json": {"schema": ERROR_SCHEMA}},
            },
            413: {
                "description": "Over the row or body limit",
                "content": {"application/json": {"schema": ERROR_SCHEMA}},
            },
            503: {
                "description": "The online store failed the write, or this server has not switched to a "
                "newly published data version yet (retry shortly)",
                "content": {"application/json": {"schema": ERROR_SCHEMA}},
            },
            504: {
                "description": PUSH_DEADLINE_TEXT,
                "content": {"application/json": {"schema": ERROR_SCHEMA}},
            },
        },
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": PUSH_REQUEST_SCHEMA}},
            }
        },
    )
    async def push(request: Request) -> Response:
        t0 = time.perf_counter()
        try:
            length = int(request.headers.get("content-length", "-1") or -1)
            body = await api.read_body(request.receive, length)
            if body is None:
                raise LimitExceeded(f"request body exceeds the limit of {api.max_body_bytes} bytes")
            deadline = time.monotonic() + api.deadline_ms / 1000.0
            result = await api.push.push(json_codec.decode_push(body), deadline)
        except FeatureStoreError as e:
            push_outcomes.failed(t0, e)
            return error_response(e)
        except Exception as e:
            log.exception("push failed")
            error = internal_error(e)
            push_outcomes.failed(t0, error)
            return error_response(error)
        except asyncio.CancelledError:
            push_outcomes.cancelled(t0)
            raise
        push_outcomes.succeeded(t0)
        doc = {"rows_written": result.rows_written, "data_version": result.data_version}
        return Response(json_codec.encode(doc), media_type="application/json")

    @app.get("/v1/registry", summary="The registry snapshot being served")
    async def registry() -> Response:
        state = engine.state
        snap = state.snapshot
        doc = {
            "version": snap.version,
            "fingerprint": snap.fingerprint,
            "created_at": snap.created_at,
            "message": snap.message,
            "data_versions": dict(state.data_versions),
            "definitions": definitions_to_dict(snap.definitions),
        }
        return Response(json_codec.encode(doc), media_type="application/json")

    @app.get("/healthz", summary="Liveness: the process is up")
    async def healthz() -> Response:
        return Response(b'{"status":"ok"}', media_type="application/json")

    @app.get(
        "/readyz", summary="Readiness: serving a snapshot and not shutting down; store health in the body"
    )
    async def readyz() -> Response:
        r = readiness()
        doc = {"ready": r.ready, "reasons": list(r.reasons), **r.details}
        return Response(json_codec.encode(doc), 200 if r.ready else 503, media_type="application/json")

    @app.get("/metrics", summary="Prometheus metrics")
    async def prometheus() -> Response:
        data, ctype = metrics.exposition()
        return Response(data, media_type=ctype)

    @app.exception_handler(FeatureStoreError)
    async def on_error(_: Request, e: FeatureStoreError) -> Response:
        return error_response(e)

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(request: Request, e: StarletteHTTPException) -> Response:
        code = {404: "NOT_FOUND", 405: "INVALID_ARGUMENT"}.get(e.status_code, "INVALID_ARGUMENT")
        msg = (
            f"no route {request.method} {request.url.path}" if e.status_code in (404, 405) else str(e.detail)
        )
        body = json_codec.encode_error({"code": code, "message": msg, "details": []})
        return Response(body, e.status_code, media_type="application/json")

    @app.exception_handler(RequestValidationError)
    async def on_validation_error(_: Request, e: RequestValidationError) -> Response:
        return error_response(InvalidArgument(f"invalid request: {e.errors()}"))

    @app.exception_handler(Exception)
    async def on_unexpected(_: Request, e: Exception) -> Response:
        log.exception("unhandled error")
        return error_response(internal_error(e))

    def openapi() -> dict[str, Any]:
        # The join is answered before FastAPI routing (HttpApi._join), so it has no
        # route here; it is documented by adding its operation to the generated spec.
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title, version=app.version, description=app.description, routes=app.routes
            )
            schema["paths"] = {JOIN_PATH: {"post": JOIN_OPERATION}, **schema.get("paths", {})}
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app
