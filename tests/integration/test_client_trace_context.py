"""The trace context featurestore.client sends, against a real server over HTTP and gRPC,
blocking and asyncio: a ``traceparent`` that is no W3C trace context is refused before
anything is sent (it was retried as "cannot reach" over HTTP, INTERNAL over gRPC, or a
bare UnicodeEncodeError), the same on every variant; the forms the server honours are
sent and honoured."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from featurestore import tracing
from featurestore.client import AsyncFeatureClient, FeatureClient, InvalidArgumentError
from featurestore.client.options import check_traceparent
from tests.integration.test_derived_serving import demo_definitions, start_server
from tests.support import CLIENT_DEADLINE_S, ServerProcess

TRANSPORTS = ["http", "grpc"]
AGE = ["user_profile:age"]
TRACE, PARENT = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
VALID = f"00-{TRACE}-{PARENT}-01"
INVALID = {
    "garbage": "garbage",
    "header injection": "00-abc\r\nx-evil: 1",
    "non-ASCII": "tëst",
    "non-ASCII in a valid form": f"00-{TRACE[:-1]}é-{PARENT}-01",
    "trailing space": VALID + " ",
    "leading tab": "\t" + VALID,
    "uppercase hex": VALID.upper(),
    "version ff": f"ff-{TRACE}-{PARENT}-01",
    "version 00 with a fifth field": VALID + "-what",
    "zero trace id": f"00-{'0' * 32}-{PARENT}-01",
    "zero parent id": f"00-{TRACE}-{'0' * 16}-01",
    "short trace id": f"00-{TRACE[:-2]}-{PARENT}-01",
    "future version with a control character": f"01-{TRACE}-{PARENT}-01-a\x01",
}


@pytest.fixture(scope="module")
def demo(demo_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    work = tmp_path_factory.mktemp("client-trace")
    proc = start_server(work, demo_dir, demo_definitions(demo_dir, work / "features.yaml"))
    yield proc
    proc.stop()


def address(server: ServerProcess, transport: str) -> str:
    return server.url if transport == "http" else f"grpc://{server.grpc_target}"


def assert_refused(error: BaseException, traceparent: str) -> None:
    assert isinstance(error, InvalidArgumentError) and isinstance(error, ValueError), repr(error)
    assert error.code == "INVALID_ARGUMENT"
    assert error.message.startswith(f"traceparent {traceparent!r:.80}: "), error.message
    assert "expected 00-<32 hex digits: trace id>" in error.message


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("kind", INVALID)
def test_a_traceparent_that_is_no_w3c_trace_context_is_refused_before_anything_is_sent(
    demo: ServerProcess, transport: str, kind: str
) -> None:
    retries: list[int] = []
    where = address(demo, transport)
    with FeatureClient(where, deadline=CLIENT_DEADLINE_S, on_retry=lambda n, e: retries.append(n)) as client:
        with pytest.raises(InvalidArgumentError) as refused:
            client.join({"user_id": [17]}, AGE, traceparent=INVALID[kind])
        assert client.join({"user_id": [17]}, AGE, traceparent=VALID).trace_id == TRACE  # still usable
    assert_refused(refused.value, INVALID[kind])
    assert retries == []


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("kind", INVALID)
async def test_the_asyncio_client_refuses_such_a_traceparent_alike(
    demo: ServerProcess, transport: str, kind: str
) -> None:
    retries: list[int] = []
    where = address(demo, transport)
    async with AsyncFeatureClient(where, on_retry=lambda n, e: retries.append(n)) as client:
        with pytest.raises(InvalidArgumentError) as refused:
            await client.join({"user_id": [17]}, AGE, traceparent=INVALID[kind])
    assert_refused(refused.value, INVALID[kind])
    assert retries == []


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_traceparent_that_is_no_str_is_refused_as_a_type_error(demo: ServerProcess, transport: str) -> None:
    with FeatureClient(address(demo, transport)) as client, pytest.raises(InvalidArgumentError) as refused:
        client.join({"user_id": [17]}, AGE, traceparent=VALID.encode())  # type: ignore[arg-type]
    assert isinstance(refused.value, TypeError) and refused.value.message.startswith("traceparent: a str")


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize(
    "traceparent",
    [VALID, f"00-{TRACE}-{PARENT}-00", f"01-{TRACE}-{PARENT}-01", f"cc-{TRACE}-{PARENT}-01-later-fields"],
    ids=["sampled", "not sampled", "version 01", "a later version's fields"],
)
def test_each_form_the_server_honours_is_sent_and_puts_the_join_into_that_trace(
    demo: ServerProcess, transport: str, traceparent: str
) -> None:
    with FeatureClient(address(demo, transport), deadline=CLIENT_DEADLINE_S) as client:
        assert client.join({"user_id": [17]}, AGE, traceparent=traceparent).trace_id == TRACE


@pytest.mark.parametrize(
    "traceparent",
    [
        *INVALID.values(),
        VALID,
        f"01-{TRACE}-{PARENT}-01",
        f"cc-{TRACE}-{PARENT}-01-x",
        f"00-{TRACE}-{PARENT}-ff",
    ],
)
def test_the_client_sends_exactly_what_the_servers_parser_honours_that_a_header_can_carry(
    traceparent: str,
) -> None:
    """featurestore/tracing.py strips spaces and tabs around the value (HTTP syntax) and
    takes any text in a later version's fields; the client sends neither (h11 refuses
    them; gRPC would carry spaces around it)."""
    try:
        check_traceparent(traceparent)
        client_sends = True
    except InvalidArgumentError:
        client_sends = False
    server_honours = tracing._trace_id_from(traceparent) != 0
    if traceparent == traceparent.strip() and all("!" <= c <= "~" for c in traceparent):
        assert client_sends == server_honours
    else:
        assert not client_sends
