"""gRPC API (grpc.aio): ``featurestore.v1.FeatureService`` plus health and reflection.

Methods are registered with raw-bytes (de)serializers so the handler parses the
request itself: a malformed message becomes INVALID_ARGUMENT with a reason instead
of grpc's generic INTERNAL, and responses are serialized once, without a copy.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from typing import NoReturn

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from opentelemetry.trace import Span

from featurestore import deadlines, metrics, tracing
from featurestore.api import credentials, proto_codec
from featurestore.api.errors import GRPC_STATUS, grpc_message, internal_error
from featurestore.api.outcome import CANCELLED, Outcomes
from featurestore.auth import READ, WRITE, Authenticator
from featurestore.config import GrpcConfig, TlsConfig
from featurestore.deadlines import Deadlines
from featurestore.errors import Code, DeadlineExceeded, FeatureStoreError, InvalidArgument, LimitExceeded
from featurestore.join import JoinEngine
from featurestore.lone_calls import LONE_CALLS
from featurestore.overload import LoadShedder
from featurestore.push import PushService
from featurestore.refusal import RETRY_AFTER_SECONDS, SHED, shed
from featurestore.row_cap import entity_rows
from featurestore.v1 import featurestore_pb2 as pb

log = logging.getLogger(__name__)
_EOF_GRACE_SECONDS = 0.005  # see GrpcApi._request

SERVICE = "featurestore.v1.FeatureService"
JOIN_METHOD = f"/{SERVICE}/Join"  # the metrics' route label (the gRPC path)
PUSH_METHOD = f"/{SERVICE}/Push"
# OpenTelemetry's RPC conventions name a server span "package.Service/Method".
JOIN_SPAN = f"{SERVICE}/Join"
MAX_ANSWER_BYTES = 64 * 1024 * 1024  # grpc.max_send_message_length (fixed; the client takes as much)
PUSH_SPAN = f"{SERVICE}/Push"


def engine_budget(configured: float, remaining: float | None) -> float:
    """Seconds the join engine may spend: the time left of the configured deadline or of
    the call's, whichever ends sooner, less the margin for the reply
    (``deadlines.engine_budget``)."""
    return deadlines.engine_budget(configured if remaining is None else min(configured, remaining))


class GrpcApi:
    def __init__(
        self,
        engine: JoinEngine,
        push: PushService,
        deadline_ms: int,
        auth: Authenticator | None = None,
        shedder: LoadShedder | None = None,
        unary_join: bool = False,
    ) -> None:
        """``auth``: bearer tokens Join and Push need (None: none asked for; health and
        reflection never ask); ``shedder``: the worker's load shedding (None: none)."""
        self.auth = auth
        self.shedder = shedder
        self.engine = engine
        self.push_service = push
        self.deadline_ms = deadline_ms
        self.health = health.aio.HealthServicer()
        self._inflight = metrics.inflight("grpc")
        self._join_outcomes = Outcomes(JOIN_METHOD, "grpc")
        self._push_outcomes = Outcomes(PUSH_METHOD, "grpc")
        self._deadlines = Deadlines()  # the wait for a call's message (one event loop)
        self._methods: dict[str, grpc.RpcMethodHandler] = {
            "Join": (
                grpc.unary_unary_rpc_method_handler(self._join_unary_rpc)
                if unary_join
                else grpc.stream_unary_rpc_method_handler(self._join_rpc)  # see GrpcApi._request
            ),
            "Push": grpc.stream_unary_rpc_method_handler(self._push_rpc),
        }

    def register(self, server: grpc.aio.Server) -> None:
        # Registered methods, not a generic handler: core routes a call to its method's
        # take-up without a lookup of its name in Python, and grpc_intake.py can keep more
        # take-ups of Join outstanding (registering alone: about +8% QPS at batch 100 and +9% at
        # 1, medians of scratch runs, benchmarks/results/experiments.md, "gRPC call intake").
        server.add_registered_method_handlers(SERVICE, self._methods)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        names = (
            pb.DESCRIPTOR.services_by_name["FeatureService"].full_name,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        )
        reflection.enable_server_reflection(names, server)

    def handler(self, method: str) -> grpc.RpcMethodHandler:
        """The handler registered for ``method`` (``Join``, ``Push``)."""
        return self._methods[method]

    async def set_serving(self, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ("", SERVICE):
            await self.health.set(name, status)

    async def join(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        """One Join, accounted as it returns (grpc itself calls ``_join_rpc``)."""
        call = Call(self._join_outcomes)
        self._inflight.inc()
        try:
            return await self._join(request, context, call)
        finally:
            self._inflight.dec()
            call.record()

    async def push(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        """One Push, accounted as it returns (grpc itself calls ``_push_rpc``)."""
        call = Call(self._push_outcomes)
        try:
            return await self._push(request, context, call)
        finally:
            call.record()

    async def _join_rpc(self, requests: object, context: grpc.aio.ServicerContext) -> bytes:
        call = Call(self._join_outcomes, context)
        context.add_done_callback(call.finish)
        # in flight from the call's start, as an HTTP join from its handler's: the wait
        # for its message, a refusal and a shed one included
        self._inflight.inc()
        LONE_CALLS.set(self._inflight)  # this call's task (grpc.aio's, one per call) only
        try:
            return await self._join(await self._request(context, call), context, call)
        finally:
            self._inflight.dec()

    async def _join_unary_rpc(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        call = Call(self._join_outcomes, context)
        context.add_done_callback(call.finish)
        self._inflight.inc()
        LONE_CALLS.set(self._inflight)
        try:
            return await self._join(request, context, call)
        finally:
            self._inflight.dec()

    async def _push_rpc(self, requests: object, context: grpc.aio.ServicerContext) -> bytes:
        call = Call(self._push_outcomes, context)
        context.add_done_callback(call.finish)
        return await self._push(await self._request(context, call), context, call)

    async def _request(self, context: grpc.aio.ServicerContext, call: Call) -> bytes:
        """The call's one request message, awaited for what is left of
        ``limits.deadline_ms`` from the call's start (the join then gets what is left of
        it, less the answer's margin: ``engine_budget``): a call whose
        message does not come by then ends DEADLINE_EXCEEDED instead of holding its stream
        and handler for as long as its client keeps the connection open. The methods are
        registered as client-streaming (the same frames on the wire as unary), so the
        handler runs from the call's start and its accounting sees calls that end before
        their message is read."""
        deadline = time.monotonic() + self._configured(call)
        try:
            with self._deadlines.guard(deadline):  # no loop timer per call (deadlines.py)
                message = await context.read()
        except TimeoutError:
            error = DeadlineExceeded(
                f"the call's request message did not arrive within limits.deadline_ms ({self.deadline_ms} ms)"
            )
            await _abort(context, call, error)
        if message is grpc.aio.EOF:
            # EOF is also what a call ending before its message gives: cancelled by its
            # client, or its message refused by grpc (over the size limit). grpc cancels this
            # handler for those once the loop has run its callbacks (in the next step on an
            # idle machine; the wait leaves a loaded loop room); such a call is counted as it
            # ended (``Call.finish``), not as a client's mistake. A live call gets the abort.
            await asyncio.sleep(_EOF_GRACE_SECONDS)
            await _abort(context, call, InvalidArgument("the call carries no request message"))
        assert isinstance(message, bytes)
        return message

    async def _authenticate(self, context: grpc.aio.ServicerContext, call: Call, scope: str) -> None:
        assert self.auth is not None
        value = credentials.grpc_value(context.invocation_metadata())  # (given twice: refused)
        error = self.auth.check_grpc(value, scope, call.outcomes.route)
        if error is not None:
            error = credentials.refusal(error, value, scope)
            await _abort(context, call, error, trailing=(("www-authenticate", credentials.challenge(error)),))

    async def _join(self, request: bytes, context: grpc.aio.ServicerContext, call: Call) -> bytes:
        if self.auth is not None:
            await self._authenticate(context, call, READ)
        shedder = self.shedder
        if shedder is not None and (reason := shedder.admit(self._time_left(call, context))) is not None:
            await _shed(context, call, reason)
        return await self._answer_join(request, context, call)

    def _time_left(self, call: Call, context: grpc.aio.ServicerContext) -> float:
        """Seconds left of the call's deadline, the configured one's or its client's."""
        configured, remaining = self._configured(call), context.time_remaining()
        return configured if remaining is None else min(configured, remaining)

    def _configured(self, call: Call) -> float:
        """Seconds left of ``limits.deadline_ms``, counted from the call's start (before
        its message was read), as HTTP's from the request's first byte."""
        return self.deadline_ms / 1000.0 - (time.perf_counter() - call.t0)

    async def _answer_join(self, request: bytes, context: grpc.aio.ServicerContext, call: Call) -> bytes:
        """The join, admitted by the shedder (if any) already: ``done`` is called here."""
        shedder, rows = self.shedder, 0  # (rows: taken from its row cap)
        span: Span | None = None  # (started in the try: an admitted join always reaches done)
        try:
            span = tracing.start_request_span(JOIN_SPAN, _traceparent(context))
            trace_id = tracing.trace_id_hex(span)
            budget = engine_budget(self._configured(call), context.time_remaining())
            deadline = time.monotonic() + budget
            req = proto_codec.decode_join(request)
            if shedder is not None:
                rows = entity_rows(req.entities, self.engine.limits.max_rows)
                if (reason := shedder.admit_rows(rows)) is not None:
                    shedder = None  # its admission undone: no done()
                    raise _Shed(reason)
            result = await self.engine.join(req, deadline, span)
            out = proto_codec.encode_join(result, trace_id)
            if len(out) > MAX_ANSWER_BYTES:  # (grpc would fail its send, with the call counted ok)
                raise LimitExceeded(
                    f"the answer is {len(out):,} bytes, over the {MAX_ANSWER_BYTES:,} a gRPC answer "
                    "may hold: ask for fewer rows or features (HTTP has no such limit)"
                )
        except _Shed as e:
            tracing.mark_shed(span, e.reason)
            await _shed(context, call, e.reason)
        except FeatureStoreError as e:
            await _abort(context, call, e, span)
        except Exception as e:
            log.exception("grpc join failed")
            await _abort(context, call, internal_error(e), span, e)
        finally:  # a CancelledError (the caller left, or its deadline passed) leaves no outcome
            if span is not None:
                span.end()
            if shedder is not None:
                shedder.done(rows)
        call.answer("partial" if result.partial else "ok")
        return out

    async def _push(self, request: bytes, context: grpc.aio.ServicerContext, call: Call) -> bytes:
        if self.auth is not None:
            await self._authenticate(context, call, WRITE)
        span = tracing.start_request_span(PUSH_SPAN, _traceparent(context))
        try:
            budget = engine_budget(self._configured(call), context.time_remaining())
            deadline = time.monotonic() + budget
            result = await self.push_service.push(proto_codec.decode_push(request), deadline)
            out = proto_codec.encode_push(result)
        except FeatureStoreError as e:
            await _abort(context, call, e, span)
        except Exception as e:
            log.exception("grpc push failed")
            await _abort(context, call, internal_error(e), span, e)
        finally:
            span.end()
        call.answer("ok")
        return out


class Call:
    """The outcome of one call, recorded once: as its client sees it when grpc finishes
    the call (``finish``, the call's done callback), or as the handler returned
    (``record``, when called directly).

    The client sees what happened by its deadline. An answer handed to grpc after the
    deadline is DEADLINE_EXCEEDED to the client, however the handler ended; so is a call
    with no answer once its deadline has passed (grpc cancelled the handler, or the call
    waited for the event loop until grpc dropped it before its message was read). A
    call with no answer and time left was cancelled by its client. ``t0`` is the call's
    start: the handler runs before the request message is read (see ``_request``)."""

    __slots__ = ("answered_at", "deadline", "outcome", "outcomes", "t0")

    def __init__(self, outcomes: Outcomes, context: grpc.aio.ServicerContext | None = None) -> None:
        self.outcomes = outcomes
        self.t0 = time.perf_counter()
        remaining = None if context is None else context.time_remaining()
        self.deadline = math.inf if remaining is None else self.t0 + remaining
        self.outcome: str | None = None  # ok, partial or an error code; None: no answer
        self.answered_at = 0.0

    def answer(self, outcome: str) -> None:
        self.outcome = outcome
        self.answered_at = time.perf_counter()

    def finish(self, context: grpc.aio.ServicerContext) -> None:
        if self.outcome is None:
            late = time.perf_counter() >= self.deadline
        else:
            late = self.answered_at > self.deadline
        self.outcomes.record(Code.DEADLINE_EXCEEDED.value if late else self.outcome or CANCELLED, self.t0)

    def record(self) -> None:
        self.outcomes.record(self.outcome or CANCELLED, self.t0)


class _Shed(Exception):
    """A decoded join refused by the row cap (raised and caught in ``_answer_join``)."""

    def __init__(self, reason: str) -> None:
        self.reason = reason


async def _shed(context: grpc.aio.ServicerContext, call: Call, reason: str) -> NoReturn:
    """End a call the shedder refused: RESOURCE_EXHAUSTED with Retry-After, counted as shed."""
    retry_after = (("retry-after", str(RETRY_AFTER_SECONDS)),)
    await _abort(context, call, shed("grpc", reason), trailing=retry_after, outcome=SHED)


async def _abort(
    context: grpc.aio.ServicerContext,
    call: Call,
    error: FeatureStoreError,
    span: Span | None = None,
    cause: BaseException | None = None,
    trailing: tuple[tuple[str, str], ...] = (),
    outcome: str | None = None,
) -> NoReturn:
    """Note the call's error (and its span's), then end it with the error's status.
    ``outcome``: what it is counted as, when not the error's code (a shed join)."""
    call.answer(outcome or error.code.value)
    call.outcomes.span_error(error, span, cause)
    message = grpc_message(error.message)  # bounded: a client drops a long trailer
    if trailing:
        await context.abort(GRPC_STATUS[error.code], message, trailing_metadata=trailing)
    await context.abort(GRPC_STATUS[error.code], message)
    raise AssertionError("unreachable: grpc's abort raises")


def _traceparent(context: grpc.aio.ServicerContext) -> str | None:
    return _metadata(context, "traceparent")


def _metadata(context: grpc.aio.ServicerContext, name: str) -> str | None:
    for key, value in context.invocation_metadata() or ():
        if key == name:
            return str(value)
    return None


def server_credentials(tls: TlsConfig) -> grpc.ServerCredentials:
    """The listener's TLS (mutual when ``tls.client_ca_file`` is set) from PEM files."""
    with open(tls.key_file, "rb") as f:
        key = f.read()
    with open(tls.cert_file, "rb") as f:
        chain = f.read()
    ca = None
    if tls.client_ca_file:
        with open(tls.client_ca_file, "rb") as f:
            ca = f.read()
    return grpc.ssl_server_credentials(
        ((key, chain),), root_certificates=ca, require_client_auth=ca is not None
    )


def create_server(max_message_bytes: int, limits: GrpcConfig, reuse_port: bool) -> grpc.aio.Server:
    """``reuse_port`` only for supervised workers: grpc would otherwise set SO_REUSEPORT
    by default, and a second server started by mistake on the same port would quietly
    take half the traffic instead of failing to bind.

    ``limits`` bound what a connection may hold; grpc core enforces them (and exposes
    no count of when it does): idle and aged connections get a GOAWAY, a client pinging
    faster than allowed gets GOAWAY ENHANCE_YOUR_CALM after ``max_ping_strikes``, request
    metadata over the limit fails the call with RESOURCE_EXHAUSTED, a connection's calls
    beyond ``max_concurrent_streams`` wait in the client."""
    ms = _milliseconds
    return grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", MAX_ANSWER_BYTES),
            ("grpc.so_reuseport", 1 if reuse_port else 0),
            ("grpc.max_connection_idle_ms", ms(limits.max_connection_idle_seconds)),
            ("grpc.max_connection_age_ms", ms(limits.max_connection_age_seconds)),
            ("grpc.max_connection_age_grace_ms", ms(limits.max_connection_age_grace_seconds)),
            ("grpc.keepalive_time_ms", ms(limits.keepalive_seconds)),
            ("grpc.keepalive_timeout_ms", ms(limits.keepalive_timeout_seconds)),
            ("grpc.keepalive_permit_without_calls", 1),  # clients may keep an idle channel alive
            ("grpc.http2.min_ping_interval_without_data_ms", ms(limits.min_ping_interval_seconds)),
            ("grpc.http2.max_ping_strikes", limits.max_ping_strikes),
            ("grpc.max_metadata_size", limits.max_metadata_bytes),  # soft limit
            ("grpc.absolute_max_metadata_size", limits.max_metadata_bytes),  # hard: same, no randomness
            ("grpc.server_handshake_timeout_ms", ms(limits.handshake_timeout_seconds)),
            ("grpc.max_concurrent_streams", limits.max_concurrent_streams),
        ]
    )


def _milliseconds(seconds: float) -> int:
    return max(1, round(seconds * 1000))
