"""featurestore.client against a real server, over HTTP and gRPC, blocking and asyncio:
values and statuses, derived features with request_data, errors by code, retries
across a server that is down and then up, traceparent (a hung server's deadline:
test_client_hung_server.py)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme

from featurestore.client import (
    AsyncFeatureClient,
    FeatureClient,
    InvalidArgumentError,
    JoinResult,
    NotFoundError,
    Status,
    UnavailableError,
)
from tests.integration.client_demo import address, demo_server
from tests.integration.test_derived_serving import DERIVED
from tests.support import CLIENT_DEADLINE_S, ServerProcess

TRANSPORTS = ["http", "grpc"]


@pytest.fixture(scope="module")
def demo(demo_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    yield from demo_server(demo_dir, tmp_path_factory, "client-server")


PATIENT = CLIENT_DEADLINE_S  # the tests not about deadlines (the deadline tests give their own)


def patient(where: str, **options: Any) -> FeatureClient:
    return FeatureClient(where, deadline=PATIENT, **options)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_join_returns_values_statuses_event_times_version_and_trace(
    demo: ServerProcess, transport: str
) -> None:
    with patient(address(demo, transport)) as client:
        r = client.join({"user_id": [17, 4242, -1]}, ["user_profile:age", "user_activity:ctr_30d"])
    assert r.feature_names == ["user_id", "age", "ctr_30d"]
    assert r["user_id"].values == [17, 4242, -1]
    assert r["age"].statuses == [Status.PRESENT, Status.PRESENT, Status.NOT_FOUND]
    assert r["age"].values[2] is None and isinstance(r["age"].values[0], int)
    assert r["age"].event_timestamps[0] is not None and r["age"].event_timestamps[2] is None
    assert r["user_id"].event_timestamps == [None, None, None]
    assert r.registry_version >= 1 and len(r.trace_id) == 32 and not r.partial
    assert len(r) == 3


def test_round_robin_resolves_the_name_and_joins(demo: ServerProcess) -> None:
    with patient(f"grpc://localhost:{demo.grpc_port}", round_robin=True) as client:
        r = client.join({"user_id": [17]}, ["user_profile:age"])
    assert r["age"].statuses == [Status.PRESENT]


def test_both_transports_return_the_same_result(demo: ServerProcess) -> None:
    entities = {"user_id": [17, 4242, 17, 99_999_999]}
    results = []
    for transport in TRANSPORTS:
        with patient(address(demo, transport)) as client:
            results.append(client.join(entities, feature_service="ranker_v1"))
    http, grpc_ = results
    assert http.to_dict() == grpc_.to_dict()
    assert http.statuses() == grpc_.statuses()
    assert [c.event_timestamps for c in http] == [c.event_timestamps for c in grpc_]


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_derived_features_read_request_data_as_the_http_api_computes_them(
    demo: ServerProcess, transport: str
) -> None:
    users, prices = [17, 4242, 17], [5.0, 75.0, None]
    status, raw = demo.join(
        {
            "entities": {"user_id": users},
            "request_data": {"item_price": prices},
            "feature_service": "ranker_v2",
        }
    )
    assert status == 200, raw
    want = dict(zip(raw["metadata"]["feature_names"], (c["values"] for c in raw["results"]), strict=True))
    with patient(address(demo, transport)) as client:
        r = client.join({"user_id": users}, feature_service="ranker_v2", request_data={"item_price": prices})
    for name in DERIVED:
        assert r[name].values == pytest.approx(want[name], nan_ok=True), name
    assert r["ctr_x_price_bucket"].values[2] is None  # a null request value gives a null feature


@pytest.mark.parametrize(
    ("prices", "problem"),
    [
        ([5.0, float("nan"), 1.0], "request_data.item_price[1]: nan is not a finite number"),
        ([5.0, float("inf"), 1.0], "request_data.item_price[1]: inf is not a finite number"),
        ([True, 1.0, 2.0], "request_data.item_price[1]: 1.0 (float): a field's values must be all numbers"),
        (
            [1.0, "cheap", 2.0],
            "request_data.item_price[1]: 'cheap' (str): a field's values must be all numbers",
        ),
    ],
)
def test_request_data_neither_transport_can_carry_is_refused_alike_on_both(
    demo: ServerProcess, prices: list[Any], problem: str
) -> None:
    for transport in TRANSPORTS:
        with patient(address(demo, transport)) as client, pytest.raises(InvalidArgumentError) as e:
            client.join(
                {"user_id": [17, 4242, 17]}, feature_service="ranker_v2", request_data={"item_price": prices}
            )
        assert e.value.message.startswith(problem), (transport, e.value.message)


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_the_async_client_joins_concurrently(demo: ServerProcess, transport: str) -> None:
    import asyncio

    async with AsyncFeatureClient(address(demo, transport), deadline=PATIENT) as client:
        results = await asyncio.gather(
            *(client.join({"user_id": [u]}, ["user_profile:age"]) for u in (1, 2, 3, 4))
        )
    assert [r.feature_names for r in results] == [["user_id", "age"]] * 4
    assert all(r["age"].statuses == [Status.PRESENT] for r in results)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_errors_raise_the_exception_of_their_code_with_the_servers_message(
    demo: ServerProcess, transport: str
) -> None:
    with patient(address(demo, transport)) as client:
        with pytest.raises(NotFoundError) as missing:
            client.join({"user_id": [1]}, ["user_profile:no_such_feature"])
        assert missing.value.code == "NOT_FOUND" and "no_such_feature" in missing.value.message
        with pytest.raises(InvalidArgumentError) as no_price:
            client.join({"user_id": [1]}, feature_service="ranker_v2")
        assert "item_price" in no_price.value.message
    if transport == "http":
        assert missing.value.http_status == 404 and missing.value.details


def test_the_result_converts_to_arrow_and_pandas(demo: ServerProcess) -> None:
    with patient(demo.url) as client:
        r = client.join({"user_id": [17, -1]}, ["user_profile:age", "user_profile:country"])
    table = r.to_arrow(statuses=True)
    assert table.column_names == [
        "user_id",
        "user_id__status",
        "age",
        "age__status",
        "country",
        "country__status",
    ]
    assert table.column("age").to_pylist()[1] is None
    assert table.column("age__status").to_pylist() == ["PRESENT", "NOT_FOUND"]
    frame = r.to_pandas()
    assert list(frame.columns) == ["user_id", "age", "country"] and len(frame) == 2


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_given_traceparent_puts_the_join_into_that_trace(demo: ServerProcess, transport: str) -> None:
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    with FeatureClient(address(demo, transport)) as client:
        r = client.join(
            {"user_id": [1]}, ["user_profile:age"], traceparent=f"00-{trace_id}-00f067aa0ba902b7-01"
        )
    assert r.trace_id == trace_id


def test_the_current_opentelemetry_span_is_propagated(demo: ServerProcess) -> None:
    from opentelemetry import trace
    from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

    context = SpanContext(0x1234, 0x5678, is_remote=False, trace_flags=TraceFlags(1))
    with trace.use_span(NonRecordingSpan(context)), patient(demo.url) as client:
        r = client.join({"user_id": [1]}, ["user_profile:age"])
    assert r.trace_id == format(0x1234, "032x")


# -- retries (deadlines: test_client_hung_server.py) -------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_server_that_is_down_is_retried_a_bounded_number_of_times_then_unavailable(transport: str) -> None:
    from tests.support import free_port

    port = free_port()  # reserved, nothing listens
    where = f"http://127.0.0.1:{port}" if transport == "http" else f"grpc://127.0.0.1:{port}"
    retries: list[int] = []
    client = FeatureClient(where, retries=2, backoff=0.01, on_retry=lambda n, e: retries.append(n))
    with client, pytest.raises(UnavailableError):
        client.join({"user_id": [1]}, ["user_profile:age"], deadline=30)
    assert retries == [1, 2]


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_only_unavailable_is_retried(demo: ServerProcess, transport: str) -> None:
    retries: list[int] = []
    client = patient(address(demo, transport), on_retry=lambda n, e: retries.append(n))
    with client, pytest.raises(NotFoundError):
        client.join({"user_id": [1]}, ["nope:nope"])
    assert retries == []


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_join_retried_while_the_server_is_down_succeeds_once_it_is_up(
    test_repo: Path, tmp_path: Path, transport: str
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(
        f"registry: {{path: {tmp_path / 'registry'}}}\nstores: {{default: {{kind: memory}}, local: {{kind: memory}}}}\n"
    )
    server = ServerProcess(
        ["--config", str(config), "--definitions", str(test_repo)], log_path=tmp_path / "log"
    )
    failed_once = threading.Event()
    outcome: list[Any] = []

    def call() -> None:
        with FeatureClient(
            address(server, transport),
            retries=10_000,
            max_backoff=0.2,
            on_retry=lambda n, e: failed_once.set(),
        ) as client:
            try:
                outcome.append(client.join({"user_id": [17]}, ["user_profile:age"], deadline=120))
            except Exception as e:
                outcome.append(e)

    caller = threading.Thread(target=call, daemon=True)
    caller.start()
    try:
        assert failed_once.wait(60), "the first try never failed"
        server.start()
        caller.join(120)
    finally:
        server.stop()
    (result,) = outcome
    assert isinstance(result, JoinResult), result
    assert result["age"].statuses == [Status.PRESENT]


# -- what the client sends: token, deadline header, over TLS -----------------------------


class RecordingHttps:
    """An HTTPS listener that records each request's headers and answers 401 with the
    API's error body (what a server that requires a token says without one)."""

    def __init__(self, cert: Any) -> None:
        import http.server
        import ssl

        seen: list[dict[str, str]] = []
        self.seen = seen

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers["content-length"]))
                seen.append(dict(self.headers))
                body = json.dumps(
                    {"error": {"code": "UNAUTHENTICATED", "message": "bad token", "details": []}}
                )
                self.send_response(401)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body.encode())

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        cert.configure_cert(ctx)
        self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_https_with_a_ca_file_sends_the_token_trace_and_deadline_and_maps_401(tmp_path: Path) -> None:
    from featurestore.client import UnauthenticatedError

    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    server = RecordingHttps(ca.issue_cert("127.0.0.1"))
    try:
        with (
            FeatureClient(
                f"https://127.0.0.1:{server.port}", token="s3cret", ca_file=str(tmp_path / "ca.pem")
            ) as c,
            pytest.raises(UnauthenticatedError) as caught,
        ):
            c.join(
                {"user_id": [1]},
                ["v:f"],
                deadline=2.0,
                traceparent="00-" + "ab" * 16 + "-" + "cd" * 8 + "-01",
            )
        with patient(f"https://127.0.0.1:{server.port}") as untrusting, pytest.raises(UnavailableError):
            untrusting.join({"user_id": [1]}, ["v:f"])  # the system CAs do not know the test CA
    finally:
        server.close()
    assert caught.value.http_status == 401 and caught.value.message == "bad token"
    (headers,) = [{k.lower(): v for k, v in h.items()} for h in server.seen]
    assert headers["authorization"] == "Bearer s3cret"
    assert headers["traceparent"].startswith("00-" + "ab" * 16)
    assert 1 <= int(headers["x-featurestore-deadline-ms"]) <= 2000


def test_grpc_over_tls_sends_the_token_as_authorization_metadata(tmp_path: Path) -> None:
    from concurrent import futures

    import grpc

    from featurestore.client import UnauthenticatedError

    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    seen: list[dict[str, str]] = []

    def join(request: bytes, context: grpc.ServicerContext) -> bytes:
        seen.append(dict(context.invocation_metadata()))
        context.abort(grpc.StatusCode.UNAUTHENTICATED, "bad token")
        raise AssertionError("abort raises")

    server = grpc.server(futures.ThreadPoolExecutor(2))
    handler = grpc.unary_unary_rpc_method_handler(join)
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("featurestore.v1.FeatureService", {"Join": handler}),)
    )
    key_pair = (cert.private_key_pem.bytes(), cert.cert_chain_pems[0].bytes())
    port = server.add_secure_port("127.0.0.1:0", grpc.ssl_server_credentials([key_pair]))
    server.start()
    try:
        with (
            patient(f"grpcs://127.0.0.1:{port}", token="s3cret", ca_file=str(tmp_path / "ca.pem")) as c,
            pytest.raises(UnauthenticatedError, match="bad token"),
        ):
            c.join({"user_id": [1]}, ["v:f"])
    finally:
        server.stop(None)
    assert seen[0]["authorization"] == "Bearer s3cret"
