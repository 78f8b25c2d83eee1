"""HTTP API front: the join without a framework, FastAPI for everything else.

``POST /v1/feature/join`` is the hot path. A plain one (a ``content-length`` body within
the limit, HTTP/1.1, no query string, the access log off) is answered without an ASGI cycle: uvicorn's
protocol hands its body and headers to :meth:`HttpApi.direct`'s handler
(``join_cycle.py``: -5.1% server CPU per request at batch 1, -4.1% at 100, ``python -m
benchmarks.ab``). The rest of the joins :class:`HttpApi` answers straight from the ASGI
scope (no routing table, middleware stack or pydantic pass), to the same code past the
body; every other request goes to the FastAPI app (``routes.py``, which also documents
the join). Request bodies are read here, under the body limit, for the join and the push.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import time
from collections.abc import Mapping

from opentelemetry.trace import Span
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from featurestore import metrics, tracing
from featurestore.api import arrow_codec, bodies, credentials, cross_site, json_codec
from featurestore.api.answers import JSON, error_answer, header, send_answer, send_error
from featurestore.api.bodies import CLOSE, BodyUnread, ClientDisconnected
from featurestore.api.connections import RECEIVED_AT
from featurestore.api.errors import internal_error
from featurestore.api.join_cycle import STOPPED, Answer, DirectJoin, JoinHeaders
from featurestore.api.outcome import Outcomes
from featurestore.api.routes import (
    JOIN_PATH,
    OPS_PATHS,
    PUSH_PATH,
    BodyReader,
    create_app,
    requested_deadline_ms,
)
from featurestore.auth import ADMIN, READ, WRITE, Authenticator
from featurestore.deadlines import engine_budget
from featurestore.errors import FeatureStoreError, InvalidArgument, NotFound
from featurestore.health import ReadinessProbe
from featurestore.join import JoinEngine
from featurestore.overload import LoadShedder
from featurestore.push import PushService
from featurestore.refusal import RETRY_AFTER_SECONDS, SHED, shed
from featurestore.row_cap import entity_rows

log = logging.getLogger(__name__)


class JoinEndpoint:
    """Body bytes + a few headers in, the answer out (status, content type, body, more
    headers). Never raises. With a ``shedder``, the join is admitted by it (overload.py):
    first by count and lag, then by entity rows once decoded (row_cap.py)."""

    def __init__(self, engine: JoinEngine, deadline_ms: int, shedder: LoadShedder | None = None) -> None:
        self.engine = engine
        self.deadline_ms = deadline_ms
        self.shedder = shedder
        self.outcomes = Outcomes(JOIN_PATH, "http")

    async def __call__(
        self,
        body: bytes,
        accept: bytes | None,
        traceparent: str | None,
        deadline_ms: bytes | None,
        t0: float | None = None,
    ) -> Answer:
        """``t0``: the request's start by ``time.perf_counter()`` (its first byte read); now
        when not given."""
        if t0 is None:
            t0 = time.perf_counter()
        shedder = self.shedder
        if shedder is not None and (reason := shedder.admit(self.time_left(deadline_ms, t0))) is not None:
            return self._shed(reason, t0)
        rows = 0  # taken from the shedder's row cap
        span: Span | None = None  # (started in the try: an admitted join always reaches done)
        try:
            span = tracing.start_request_span("POST " + JOIN_PATH, traceparent)
            trace_id = tracing.trace_id_hex(span)
            # The deadline counts from the request's first byte (``t0``), as a gRPC call's
            # from its start: time spent on a slow body or waiting for the loop is in it.
            # The engine gets it less the answer's margin (``deadlines.engine_budget``).
            left = self._deadline(deadline_ms) / 1000.0 - (time.perf_counter() - t0)
            deadline = time.monotonic() + engine_budget(left)
            req = json_codec.decode_join(body)
            if shedder is not None:
                rows = entity_rows(req.entities, self.engine.limits.max_rows)
                if (reason := shedder.admit_rows(rows)) is not None:
                    shedder = None  # its admission undone: no done()
                    return self._shed(reason, t0, span)
            result = await self.engine.join(req, deadline, span)
            if arrow_codec.wants_arrow(accept):
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
            if span is not None:
                span.end()
            if shedder is not None:
                shedder.done(rows)
        self.outcomes.succeeded(t0, result.partial)
        return 200, ctype, out, ()

    def time_left(self, header: bytes | None, t0: float) -> float:
        """Seconds left of the join's deadline (from ``t0``), for admission; +inf for a
        header the join refuses (it answers the 400 itself)."""
        try:
            ms = self._deadline(header)
        except InvalidArgument:
            return math.inf
        return ms / 1000.0 - (time.perf_counter() - t0)

    def _deadline(self, header: bytes | None) -> int:
        """Milliseconds this join may take (``routes.requested_deadline_ms``)."""
        return requested_deadline_ms(header, self.deadline_ms)

    def _error(self, e: FeatureStoreError, t0: float, span: Span | None, cause: BaseException) -> Answer:
        self.outcomes.failed(t0, e, span, cause)
        return error_answer(e)

    def _shed(self, reason: str, t0: float, span: Span | None = None) -> Answer:
        self.outcomes.record(SHED, t0)  # not UNAVAILABLE: no server error
        tracing.mark_shed(span, reason)
        return error_answer(shed("http", reason), (b"retry-after", b"%d" % RETRY_AFTER_SECONDS))


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
        auth: Authenticator | None = None,
        ops_elsewhere: bool = False,
        shedder: LoadShedder | None = None,
    ) -> None:
        """``auth``: bearer tokens the routes need (None: none asked for);
        ``ops_elsewhere``: /healthz, /readyz and /metrics are served by the admin
        listener (``OpsApi``) and not here; ``shedder``: the worker's load shedding
        (None: none; the join endpoint admits by it)."""
        self.max_body_bytes = max_body_bytes
        # request bodies under the body limit: bodies.read_body, called as it is (no wrapper
        # coroutine on the join's path)
        self.read_body: BodyReader = functools.partial(bodies.read_body, limit=max_body_bytes)
        self.auth = auth
        self.ops_elsewhere = ops_elsewhere
        self.deadline_ms = deadline_ms
        self.join = JoinEndpoint(engine, deadline_ms, shedder)
        self.push = push
        self.app = create_app(
            engine,
            push,
            readiness,
            self.read_body,
            max_body_bytes=max_body_bytes,
            deadline_ms=deadline_ms,
        )
        for path, app in (mounts or {}).items():  # e.g. /graphql (lineage)
            self.app.add_route(path, app, methods=["GET", "POST"], include_in_schema=False)  # type: ignore[arg-type]
        # Routes other than the join that need a token's scope (when tokens are configured).
        self.scopes = {PUSH_PATH: WRITE, "/v1/registry": ADMIN, **dict.fromkeys(mounts or {}, ADMIN)}
        # their bodies are read here, under the limit: a mount's own (/graphql's) if smaller
        self.mounts = {p: getattr(a, "max_body_bytes", max_body_bytes) for p, a in (mounts or {}).items()}
        self._push_outcomes = Outcomes(PUSH_PATH, "http")
        self._inflight = metrics.inflight("http")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        if path == JOIN_PATH:
            if scope["method"] == "POST":
                await self._join(scope, receive, send)
            else:
                await self._method_not_allowed(scope, send)
            return
        if path == PUSH_PATH and (crossed := cross_site.origin_refused(scope["headers"], path)):
            # a web page of another site (the only write route; whatever the tokens)
            self._push_outcomes.failed(scope.get(RECEIVED_AT) or time.perf_counter(), crossed)
            await self._refuse(scope, receive, send, crossed)
            return
        if self.auth is not None and path in self.scopes:
            value = credentials.http_value(scope["headers"])  # (given twice: refused, credentials.py)
            error = self.auth.check_http(value, self.scopes[path], path)
            if error is not None:
                error = credentials.refusal(error, value, self.scopes[path])
                if path == PUSH_PATH:
                    self._push_outcomes.failed(scope.get(RECEIVED_AT) or time.perf_counter(), error)
                await self._refuse(scope, receive, send, error, _challenge(error))
                return
        elif self.ops_elsewhere and path in OPS_PATHS:
            await self._not_here(send, path)
            return
        if path in self.mounts:
            await self._mounted(scope, receive, send)
            return
        await self.app(scope, receive, send)

    async def _mounted(self, scope: Scope, receive: Receive, send: Send) -> None:
        """A mounted app (/graphql) reads its body whole, of any size: it is read here under
        the app's ``max_body_bytes`` (/graphql: 64 KiB) or ``limits.max_body_bytes`` if smaller."""
        limit = min(self.mounts[scope["path"]], self.max_body_bytes)
        declared = bodies.declared_length(header(scope, b"content-length"))
        try:
            body = await bodies.read_body(receive, declared, scope["headers"], limit)
        except ClientDisconnected:
            return
        except BodyUnread as e:
            await send_error(send, e, CLOSE)
            return
        if body is None:
            await send_error(send, bodies.too_large(limit))
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if replayed:
                return await receive()  # what follows: the disconnect
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)

    async def _refuse(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        error: FeatureStoreError,
        *extra: tuple[bytes, bytes],
    ) -> None:
        """Answer a refusal before the route (401/403 with WWW-Authenticate, a repeated
        Authorization header's 400, a cross-site 403) after the body (up to the limit): the
        client reads it, not a reset connection."""
        length = header(scope, b"content-length")
        headers = list(extra)
        if scope["method"] in ("POST", "PUT", "PATCH"):
            try:
                await self.read_body(receive, bodies.declared_length(length), scope["headers"])
            except ClientDisconnected:
                return
            except BodyUnread:
                headers.append(CLOSE)
        await send_error(send, error, *headers)

    async def _not_here(self, send: Send, path: str) -> None:
        await send_error(send, NotFound(f"{path} is served on the admin port (http.admin_port)"))

    async def _method_not_allowed(self, scope: Scope, send: Send) -> None:
        e = InvalidArgument(f"no route {scope['method']} {JOIN_PATH}: use POST")
        out = json_codec.encode_error(e.to_dict())
        headers = [(b"content-type", JSON), (b"content-length", str(len(out)).encode()), (b"allow", b"POST")]
        await send({"type": "http.response.start", "status": 405, "headers": headers})
        await send({"type": "http.response.body", "body": out})

    def direct(self) -> DirectJoin:
        """How uvicorn's protocol answers a plain join of this app without an ASGI cycle
        (featurestore/api/join_cycle.py; ``ConnectionGuard(direct=...)``)."""
        return DirectJoin(
            self, self._direct_join, self.join.outcomes.cancelled, self.max_body_bytes, self._inflight
        )

    async def _direct_join(self, body: bytes, headers: JoinHeaders, t0: float) -> Answer:
        refusal = self._authorize(headers, t0)
        if refusal is not None:
            return error_answer(refusal, _challenge(refusal))
        return await self._answer(body, headers, t0)

    async def _join(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The join through ASGI: what the direct cycle does not take (a chunked body, one
        over the limit, ``Expect: 100-continue``, HTTP/1.0, a query string...)."""
        self._inflight.inc()
        try:
            t0 = scope.get(RECEIVED_AT) or time.perf_counter()
            headers = JoinHeaders.scan(scope["headers"])
            refusal = self._authorize(headers, t0)
            if refusal is not None:
                await self._refuse(scope, receive, send, refusal, _challenge(refusal))
                return
            try:
                body = await self.read_body(receive, headers.length, scope["headers"])
            except ClientDisconnected:
                self.join.outcomes.cancelled(t0)
                return
            except BodyUnread as e:
                self.join.outcomes.failed(t0, e)
                await send_error(send, e, CLOSE)
                return
            answer = (
                self._too_large(t0)
                if body is None
                else await self._answer_while_there(body, headers, t0, receive)
            )
            if answer is not None:
                await send_answer(send, answer)
        finally:
            self._inflight.dec()

    def _authorize(self, headers: JoinHeaders, t0: float) -> FeatureStoreError | None:
        """The refusal of a join without a token of the read scope (counted), if any."""
        if self.auth is None:
            return None
        error = self.auth.check_http(headers.authorization, READ, JOIN_PATH)
        if error is not None:
            error = credentials.refusal(error, headers.authorization, READ)
            self.join.outcomes.failed(t0, error)
        return error

    async def _answer_while_there(
        self, body: bytes, headers: JoinHeaders, t0: float, receive: Receive
    ) -> Answer | None:
        """``_answer``, cancelled when the caller leaves meanwhile (None then: counted
        CANCELLED by the join, nobody to answer), as the direct cycle's join is
        (join_cycle.JoinCycle) and a gRPC join is: uvicorn tells an ASGI app only through
        ``receive()``, so a task waits on it for the join (this path's joins only)."""
        joining = asyncio.current_task()
        left = False

        async def watch() -> None:
            nonlocal left
            while (await receive())["type"] != "http.disconnect":
                pass
            left = True
            if joining is not None:
                joining.cancel()

        watcher = asyncio.ensure_future(watch())
        try:
            return await self._answer(body, headers, t0)
        except asyncio.CancelledError:
            if left:
                return None
            # uvicorn cancels what still runs when the drain ends: answered as the direct
            # cycle answers it (join_cycle.JoinCycle._stopped), not uvicorn's 500
            log.info("a join unanswered when the drain ended: answered 503 and closed")
            return error_answer(STOPPED, (b"retry-after", b"%d" % RETRY_AFTER_SECONDS), CLOSE)
        finally:
            watcher.cancel()

    async def _answer(self, body: bytes, headers: JoinHeaders, t0: float) -> Answer:
        """The join's answer, or the shedder's refusal of it."""
        if headers.encoding is not None and (refused := bodies.encoding_refused(headers.encoding)):
            self.join.outcomes.failed(t0, refused)
            return error_answer(refused)
        return await self.join(body, headers.accept, headers.traceparent, headers.deadline_ms, t0)

    def _too_large(self, t0: float) -> Answer:
        e = bodies.too_large(self.max_body_bytes)
        self.join.outcomes.failed(t0, e)
        return error_answer(e)


def _challenge(refusal: FeatureStoreError) -> tuple[bytes, bytes]:
    """The ``WWW-Authenticate`` header of a token check's refusal."""
    return (b"www-authenticate", credentials.challenge(refusal).encode())
