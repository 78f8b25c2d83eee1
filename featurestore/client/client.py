"""``FeatureClient`` (blocking) and ``AsyncFeatureClient`` (asyncio): joins over the HTTP
API (httpx) or gRPC (grpcio), picked by the address's scheme. docs/client.md.

Each join has one deadline (default 1 s) that covers its retries: a try that fails with
UNAVAILABLE (the server said so, or it could not be reached) is tried again after an
exponential backoff with jitter, while tries and time are left; a join the server shed
(it said when to come back: Retry-After) no sooner than that, and only if the deadline
is later. Other errors raise at once, as the exception for their code
(``featurestore.client.errors``).
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import Any, Self

import tenacity

from featurestore.client.errors import DeadlineExceededError, FailedPreconditionError, FeatureServiceError
from featurestore.client.options import (
    DEFAULT_DEADLINE,
    GRPC_CHANNEL_OPTIONS,
    ClientOptions,
    parse_address,
    remaining,
    server_deadline_ms,
    unreachable,
)
from featurestore.client.request import (
    Columns,
    check_columns,
    check_request_data,
    check_target,
    grpc_request,
    http_body,
)
from featurestore.client.result import JoinResult
from featurestore.client.wire import grpc_error, grpc_result, http_error, http_result

JOIN_PATH = "/v1/feature/join"
JOIN_METHOD = "/featurestore.v1.FeatureService/Join"
Metadata = list[tuple[str, str]]  # a join's headers (HTTP) / metadata (gRPC): ClientOptions.metadata


class _Base:
    def __init__(
        self,
        address: str,
        *,
        token: str | None = None,
        ca_file: str | None = None,
        cert_file: str | None = None,
        key_file: str | None = None,
        deadline: float = DEFAULT_DEADLINE,
        retries: int = 3,
        backoff: float = 0.05,
        max_backoff: float = 1.0,
        on_retry: Callable[[int, BaseException], None] | None = None,
        round_robin: bool = False,
    ) -> None:
        """``address``: http(s)://host:port or grpc(s)://host:port. ``token``: a bearer
        token; ``ca_file`` (and ``cert_file``/``key_file`` for mutual TLS) for https:// and
        grpcs://. ``deadline``: default seconds per join, retries included; ``retries``:
        further tries after UNAVAILABLE, waiting ``backoff`` doubling (with jitter) up to
        ``max_backoff``; ``on_retry(n, error)`` is called before each wait. ``round_robin``
        (gRPC): connect to every address the host name resolves to and spread calls."""
        self._round_robin = round_robin
        self._closed = False
        self.options = ClientOptions(
            parse_address(address),
            token,
            ca_file,
            cert_file,
            key_file,
            deadline,
            retries + 1,
            backoff,
            max_backoff,
            on_retry,
        )

    def _check_open(self) -> None:
        """A join on a closed client (before it, or a retry after a close from another
        thread) is the caller's mistake, refused alike on every variant: not httpx's
        RuntimeError, grpc's ValueError or grpc.aio's UsageError."""
        if self._closed:
            raise _closed_error()

    @property
    def transport(self) -> str:
        return self.options.address.transport

    def _verify(self) -> ssl.SSLContext | bool:
        return self.options.ssl_context() if self.options.address.tls else True

    def _encode(
        self,
        entities: Columns,
        features: Iterable[str] | None,
        feature_service: str | None,
        request_data: Columns | None,
        full_feature_names: bool,
    ) -> Any:
        names = check_target(features, feature_service)  # (a generator: read once, here)
        check_columns(entities, request_data)
        # the columns it checked: a generator's values were taken by the check and the
        # request went without them (entities are read once, by the build)
        request_data = check_request_data(request_data)
        build = http_body if self.transport == "http" else grpc_request
        return build(entities, names, feature_service, request_data, full_feature_names)

    def _http_headers(self, left: float, metadata: Metadata) -> dict[str, str]:
        return {
            "content-type": "application/json",
            "x-featurestore-deadline-ms": server_deadline_ms(left),
            **dict(metadata),
        }

    def _grpc_channel_args(self) -> tuple[str, Any, list[tuple[str, Any]]]:
        """(target, credentials or None for plaintext, channel options). With round robin
        the target resolves through DNS to every address (a headless Service's pods) and
        calls spread over a connection to each."""
        opts = self.options
        target = opts.address.target
        options: list[tuple[str, Any]] = list(GRPC_CHANNEL_OPTIONS)
        if self._round_robin:
            target = f"dns:///{target}"
            options.append(("grpc.lb_policy_name", "round_robin"))
        return target, opts.grpc_credentials() if opts.address.tls else None, options


def _closed_error() -> FeatureServiceError:
    return FailedPreconditionError("the client is closed: make a new one to join (or join before close())")


def _http_failure(e: Exception, url: str) -> FeatureServiceError:
    import httpx

    if isinstance(e, httpx.TimeoutException):
        return DeadlineExceededError(f"no answer within the client's deadline ({type(e).__name__})")
    cause = e.__cause__ or e.__context__
    untrusted = isinstance(cause, ssl.SSLCertVerificationError) or "CERTIFICATE_VERIFY_FAILED" in str(e)
    return unreachable(f"cannot reach {url}: {type(e).__name__}: {e}", retry=not untrusted)


class FeatureClient(_Base):
    """A blocking client; thread-safe, keeps its connections: make one and reuse it."""

    def __init__(self, address: str, **kwargs: Any) -> None:
        super().__init__(address, **kwargs)
        self._http: Any = None
        self._channel: Any = None
        if self.transport == "http":
            import httpx

            from featurestore.client.deadline import deadline_mounts, deadline_transport

            # its connections, direct or through the environment's proxies, do no I/O
            # past a try's deadline (deadline.py)
            verify = self._verify()
            self._http = httpx.Client(
                base_url=self.options.address.target,
                transport=deadline_transport(verify),
                mounts=deadline_mounts(verify),
            )
        else:
            import grpc

            target, creds, options = self._grpc_channel_args()
            self._channel = (
                grpc.secure_channel(target, creds, options=options)
                if creds is not None
                else grpc.insecure_channel(target, options=options)
            )
            self._join_rpc = self._channel.unary_unary(JOIN_METHOD, _serialize, _parse_response)

    def join(
        self,
        entities: Columns,
        features: Iterable[str] | None = None,
        *,
        feature_service: str | None = None,
        request_data: Columns | None = None,
        full_feature_names: bool = False,
        deadline: float | None = None,
        traceparent: str | None = None,
    ) -> JoinResult:
        """Feature values for the entity rows: ``entities`` maps each entity column to its
        keys, one per row; name ``features`` ("view:feature") or a ``feature_service``;
        ``request_data`` holds the request fields derived features read, one per row.
        ``features`` may be any iterable of names (a generator, ``df.columns``)."""
        self._check_open()
        payload = self._encode(entities, features, feature_service, request_data, full_feature_names)
        deadline_at = self.options.deadline_at(deadline)
        metadata = self.options.metadata(traceparent)  # (refuses a bad traceparent, once)
        for attempt in tenacity.Retrying(**self.options.retry_policy(deadline_at)):
            with attempt:
                if self._http is not None:
                    return self._http_once(payload, deadline_at, metadata)
                return self._grpc_once(payload, deadline_at, metadata)
        raise AssertionError("unreachable: tenacity re-raises the last failure")

    def _http_once(self, body: bytes, deadline_at: float, metadata: Metadata) -> JoinResult:
        import httpx

        from featurestore.client.deadline import bounded

        self._check_open()
        left = remaining(deadline_at)
        try:
            with bounded(deadline_at):  # httpx's timeouts bound each phase, not the try
                r = self._http.post(
                    JOIN_PATH, content=body, headers=self._http_headers(left, metadata), timeout=left
                )
        except httpx.TransportError as e:
            self._check_open()  # closed by another thread while it waited: not the server's fault
            raise _http_failure(e, self.options.address.target) from e
        except RuntimeError:  # closed by another thread since _check_open
            self._check_open()
            raise
        if r.status_code != 200:
            raise http_error(r.status_code, r.content, r.headers.get("retry-after"))
        return http_result(r.content)

    def _grpc_once(self, req: Any, deadline_at: float, metadata: Metadata) -> JoinResult:
        import grpc

        self._check_open()
        left = remaining(deadline_at)
        try:
            resp = self._join_rpc(req, timeout=left, metadata=metadata)
        except grpc.RpcError as e:
            self._check_open()  # "CANCELLED: Channel closed!": closed by another thread meanwhile
            raise grpc_error(e) from None
        except ValueError:  # "Cannot invoke RPC on closed channel!": closed since _check_open
            self._check_open()
            raise
        return grpc_result(resp)

    def close(self) -> None:
        """Releases the connections; a join after it raises ``FailedPreconditionError``."""
        self._closed = True
        if self._http is not None:
            self._http.close()
        if self._channel is not None:
            self._channel.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class AsyncFeatureClient(_Base):
    """The asyncio client (httpx.AsyncClient or grpc.aio); create it inside the event loop
    that uses it, and ``await close()`` (or ``async with``) when done."""

    def __init__(self, address: str, **kwargs: Any) -> None:
        super().__init__(address, **kwargs)
        self._http: Any = None
        self._channel: Any = None
        if self.transport == "http":
            import httpx

            self._http = httpx.AsyncClient(base_url=self.options.address.target, verify=self._verify())
        else:
            from grpc import aio

            target, creds, options = self._grpc_channel_args()
            self._channel = (
                aio.secure_channel(target, creds, options=options)
                if creds is not None
                else aio.insecure_channel(target, options=options)
            )
            self._join_rpc = self._channel.unary_unary(JOIN_METHOD, _serialize, _parse_response)

    async def join(
        self,
        entities: Columns,
        features: Iterable[str] | None = None,
        *,
        feature_service: str | None = None,
        request_data: Columns | None = None,
        full_feature_names: bool = False,
        deadline: float | None = None,
        traceparent: str | None = None,
    ) -> JoinResult:
        """See ``FeatureClient.join``."""
        self._check_open()
        payload = self._encode(entities, features, feature_service, request_data, full_feature_names)
        deadline_at = self.options.deadline_at(deadline)
        metadata = self.options.metadata(traceparent)
        async for attempt in tenacity.AsyncRetrying(**self.options.retry_policy(deadline_at)):
            with attempt:
                if self._http is not None:
                    return await self._http_once(payload, deadline_at, metadata)
                return await self._grpc_once(payload, deadline_at, metadata)
        raise AssertionError("unreachable: tenacity re-raises the last failure")

    async def _http_once(self, body: bytes, deadline_at: float, metadata: Metadata) -> JoinResult:
        import httpx

        self._check_open()
        left = remaining(deadline_at)
        try:
            async with asyncio.timeout(left):  # httpx's timeouts bound each phase, not the try
                r = await self._http.post(
                    JOIN_PATH, content=body, headers=self._http_headers(left, metadata), timeout=left
                )
        except TimeoutError:
            raise DeadlineExceededError("no answer within the client's deadline") from None
        except httpx.TransportError as e:
            self._check_open()  # closed by another task while it waited
            raise _http_failure(e, self.options.address.target) from e
        except RuntimeError:  # closed by another task since _check_open
            self._check_open()
            raise
        if r.status_code != 200:
            raise http_error(r.status_code, r.content, r.headers.get("retry-after"))
        return http_result(r.content)

    async def _grpc_once(self, req: Any, deadline_at: float, metadata: Metadata) -> JoinResult:
        import grpc

        self._check_open()
        left = remaining(deadline_at)
        try:
            resp = await self._join_rpc(req, timeout=left, metadata=metadata)
        except grpc.RpcError as e:
            self._check_open()
            raise grpc_error(e) from None
        except Exception:  # grpc.aio's UsageError "Channel is closed.": closed since _check_open
            self._check_open()
            raise
        except asyncio.CancelledError:
            # grpc.aio cancels the calls of a channel closed under them: a task nobody
            # cancelled gets the closed client's error, not a CancelledError (review s57 r2)
            task = asyncio.current_task()
            if self._closed and task is not None and not task.cancelling():
                raise _closed_error() from None
            raise
        return grpc_result(resp)

    async def close(self) -> None:
        """See ``FeatureClient.close``."""
        self._closed = True
        if self._http is not None:
            await self._http.aclose()
        if self._channel is not None:
            await self._channel.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()


def _serialize(message: Any) -> bytes:
    data: bytes = message.SerializeToString()
    return data


def _parse_response(data: bytes) -> Any:
    from featurestore.v1 import featurestore_pb2 as pb

    return pb.JoinResponse.FromString(data)
