"""featurestore.client's own refusals, against a real server over HTTP and gRPC, blocking
and asyncio: a join on a closed client (FailedPreconditionError on every variant, not
httpx's, grpc's or grpc.aio's own exception)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from featurestore.client import AsyncFeatureClient, FailedPreconditionError, FeatureClient, Status
from tests.integration.test_derived_serving import demo_definitions, start_server
from tests.support import CLIENT_DEADLINE_S, ServerProcess, free_port

TRANSPORTS = ["http", "grpc"]
AGE = "user_profile:age"


@pytest.fixture(scope="module")
def demo(demo_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    work = tmp_path_factory.mktemp("client-arguments")
    proc = start_server(work, demo_dir, demo_definitions(demo_dir, work / "features.yaml"))
    yield proc
    proc.stop()


def address(server: ServerProcess, transport: str) -> str:
    return server.url if transport == "http" else f"grpc://{server.grpc_target}"


# -- a closed client ----------------------------------------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_join_on_a_closed_client_is_a_failed_precondition(demo: ServerProcess, transport: str) -> None:
    client = FeatureClient(address(demo, transport), deadline=CLIENT_DEADLINE_S)
    assert client.join({"user_id": [17]}, [AGE])["age"].statuses == [Status.PRESENT]
    client.close()
    for _ in range(2):  # and again: close() leaves it refusing, not half open
        with pytest.raises(FailedPreconditionError, match="the client is closed") as refused:
            client.join({"user_id": [17]}, [AGE])
        assert refused.value.code == "FAILED_PRECONDITION"
    client.close()  # (a second close is fine)


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_a_join_on_a_closed_asyncio_client_is_a_failed_precondition(
    demo: ServerProcess, transport: str
) -> None:
    client = AsyncFeatureClient(address(demo, transport), deadline=CLIENT_DEADLINE_S)
    assert (await client.join({"user_id": [17]}, [AGE]))["age"].statuses == [Status.PRESENT]
    await client.close()
    for _ in range(2):
        with pytest.raises(FailedPreconditionError, match="the client is closed"):
            await client.join({"user_id": [17]}, [AGE])
    await client.close()


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_client_closed_while_a_join_retries_ends_the_join_with_a_failed_precondition(
    transport: str,
) -> None:
    """The retry after the close finds the client closed (on_retry runs before the wait)."""
    clients: list[FeatureClient] = []
    retries: list[int] = []

    def close_it(n: int, error: BaseException) -> None:
        retries.append(n)
        clients[0].close()

    where = f"{transport}://127.0.0.1:{free_port()}"  # nothing listens: UNAVAILABLE, retried
    clients.append(FeatureClient(where, retries=5, backoff=0.001, on_retry=close_it))
    with pytest.raises(FailedPreconditionError, match="the client is closed"):
        clients[0].join({"user_id": [17]}, [AGE], deadline=CLIENT_DEADLINE_S)
    assert retries == [1]
