"""The HTTP routes: their paths, and the FastAPI app that answers all but the join.

``POST /v1/feature/join`` is answered before this app by the ASGI front
(``http.HttpApi``); here it is only documented, by adding its operation to the spec
FastAPI generates (``docs.JOIN_OPERATION``). Push, registry, health, readiness and
metrics are FastAPI routes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import PlainTextResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Receive

from featurestore import __version__, metrics, tracing
from featurestore.api import bodies, cross_site, json_codec
from featurestore.api.bodies import BodyUnread, ClientDisconnected
from featurestore.api.connections import RECEIVED_AT
from featurestore.api.docs import AUTH_RESPONSES, JOIN_OPERATION, PUSH_OPENAPI_EXTRA, PUSH_RESPONSES
from featurestore.api.errors import http_status, internal_error
from featurestore.api.outcome import Outcomes
from featurestore.deadlines import engine_budget
from featurestore.definitions.snapshot import definitions_to_dict
from featurestore.errors import FeatureStoreError, InvalidArgument
from featurestore.health import ReadinessProbe
from featurestore.join import JoinEngine
from featurestore.push import PushService

log = logging.getLogger(__name__)

JOIN_PATH = "/v1/feature/join"
PUSH_PATH = "/v1/feature/push"
# Probes and Prometheus: open, and on http.admin_port alone when one is configured.
OPS_PATHS = ("/healthz", "/readyz", "/metrics")

DEADLINE_HEADER = "x-featurestore-deadline-ms"
MAX_DEADLINE_MS = 60_000


def requested_deadline_ms(header: bytes | str | None, configured: int) -> int:
    """Milliseconds a join or push may take: the configured deadline, or the
    x-featurestore-deadline-ms header's value when that is sooner. A client may shorten
    its own wait, never lengthen the server's (that bound is what keeps a slow store from
    piling up requests)."""
    if header is None:
        return configured
    # digits only (ASCII): int() also took "1_0", "+5", " -0" and other scripts' digits
    digits = (header.decode("latin-1") if isinstance(header, bytes) else header).strip(" \t")
    try:
        if not (digits.isascii() and digits.isdigit()):
            raise ValueError(digits)
        ms = int(digits)
    except ValueError:  # (also past int()'s 4,300 digits)
        raise InvalidArgument(
            f"{DEADLINE_HEADER} must be an integer number of milliseconds (digits only)"
        ) from None
    if not 0 < ms <= MAX_DEADLINE_MS:
        raise InvalidArgument(f"{DEADLINE_HEADER} must be in 1..{MAX_DEADLINE_MS}")
    return min(ms, configured)


# The body of a request, given its declared length (-1: none) and its headers, or None
# once it is known to exceed the limit and was read to its end (``HttpApi.read_body``).
BodyReader = Callable[[Receive, int, Sequence[tuple[bytes, bytes]]], Awaitable[bytes | None]]


def create_app(
    engine: JoinEngine,
    push: PushService,
    readiness: ReadinessProbe,
    read_body: BodyReader,
    *,
    max_body_bytes: int,
    deadline_ms: int,
) -> FastAPI:
    app = FastAPI(
        title="featurestore",
        version=__version__,
        description="Online feature serving. gRPC: featurestore.v1.FeatureService on the gRPC port.",
    )
    _add_push(app, push, read_body, max_body_bytes, deadline_ms)
    _add_state_routes(app, engine, readiness)
    _add_error_handlers(app)
    app.openapi = lambda: _openapi_with_join(app)  # type: ignore[method-assign]
    return app


def error_response(e: FeatureStoreError) -> Response:
    headers = {"connection": "close"} if isinstance(e, BodyUnread) else None
    return Response(
        json_codec.encode_error(e.to_dict()),
        http_status(e),
        headers=headers,
        media_type="application/json",
    )


def _add_push(
    app: FastAPI, service: PushService, read_body: BodyReader, max_body_bytes: int, deadline_ms: int
) -> None:
    outcomes = Outcomes(PUSH_PATH, "http")

    @app.post(
        PUSH_PATH,
        summary="Write rows of one feature view into its current data version",
        responses=PUSH_RESPONSES,
        openapi_extra=PUSH_OPENAPI_EXTRA,
    )
    async def push(request: Request) -> Response:
        t0 = request.scope.get(RECEIVED_AT) or time.perf_counter()
        span = tracing.start_request_span("POST " + PUSH_PATH, request.headers.get("traceparent"))
        try:
            length = bodies.declared_length(request.headers.get("content-length", "").encode("latin-1"))
            body = await read_body(request.receive, length, request.scope["headers"])
            if body is None:  # (details with the limit, as the join's)
                raise bodies.too_large(max_body_bytes)
            # (read first: the connection then serves the next request)
            ctype = cross_site.content_type_refused(request.headers.getlist("content-type"), PUSH_PATH)
            if ctype is not None:  # a form's or text/plain: a page's cross-site POST (cross_site.py)
                raise ctype
            codings = ",".join(request.headers.getlist("content-encoding")).encode("latin-1")
            refused = bodies.encoding_refused(codings)
            if refused is not None:
                raise refused
            # from the request's first byte, as a join's (a slow body is part of its time);
            # the header may shorten it, and the answer's margin is kept, as a join's
            ms = requested_deadline_ms(request.headers.get(DEADLINE_HEADER), deadline_ms)
            deadline = time.monotonic() + engine_budget(ms / 1000.0 - (time.perf_counter() - t0))
            result = await service.push(json_codec.decode_push(body), deadline)
        except FeatureStoreError as e:
            outcomes.failed(t0, e, span)
            return error_response(e)
        except ClientDisconnected:
            outcomes.cancelled(t0)
            return Response(status_code=499)  # nobody reads it: the connection is gone
        except Exception as e:
            log.exception("push failed")
            error = internal_error(e)
            outcomes.failed(t0, error, span, e)
            return error_response(error)
        except asyncio.CancelledError:
            outcomes.cancelled(t0)
            raise
        finally:
            span.end()
        outcomes.succeeded(t0)
        doc = {"rows_written": result.rows_written, "data_version": result.data_version}
        return Response(json_codec.encode(doc), media_type="application/json")


def _add_state_routes(app: FastAPI, engine: JoinEngine, readiness: ReadinessProbe) -> None:
    @app.get("/v1/registry", summary="The registry snapshot being served", responses=AUTH_RESPONSES)
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
        "/readyz",
        summary="Readiness: serving a snapshot and not shutting down; store health in the body",
        responses={503: {"description": "Shutting down (draining): take this replica out of rotation"}},
    )
    async def readyz() -> Response:
        r = readiness()
        doc = {"ready": r.ready, "reasons": list(r.reasons), **r.details}
        return Response(json_codec.encode(doc), 200 if r.ready else 503, media_type="application/json")

    @app.get(
        "/metrics",
        summary="Prometheus metrics",
        response_class=PlainTextResponse,
        responses={
            200: {
                "description": "Prometheus text exposition format",
                "content": {"text/plain": {"schema": {"type": "string"}}},
            }
        },
    )
    async def prometheus() -> Response:
        metrics.flush()  # the buffers belong to the event loop
        # Reading every worker's metrics files takes milliseconds (more with many
        # series): in a thread, not on the loop the joins wait for.
        data, ctype = await asyncio.to_thread(metrics.render)
        return Response(data, media_type=ctype)


def _add_error_handlers(app: FastAPI) -> None:
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
        # Starlette names the route's methods in the 405's headers (Allow, RFC 9110).
        return Response(body, e.status_code, headers=e.headers, media_type="application/json")

    @app.exception_handler(RequestValidationError)
    async def on_validation_error(_: Request, e: RequestValidationError) -> Response:
        return error_response(InvalidArgument(f"invalid request: {e.errors()}"))

    @app.exception_handler(Exception)
    async def on_unexpected(_: Request, e: Exception) -> Response:
        log.exception("unhandled error")
        return error_response(internal_error(e))


def _openapi_with_join(app: FastAPI) -> dict[str, Any]:
    # The join is answered before FastAPI routing (HttpApi), so it has no route here;
    # it is documented by adding its operation to the generated spec.
    if app.openapi_schema is None:
        schema = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=app.routes
        )
        schema["paths"] = {JOIN_PATH: {"post": JOIN_OPERATION}, **schema.get("paths", {})}
        app.openapi_schema = schema
    return app.openapi_schema
