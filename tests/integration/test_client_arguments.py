"""featurestore.client's arguments, against a real server over HTTP and gRPC, blocking
and asyncio: ``features`` given as any iterable (read once: a generator was sent empty,
a numpy array raised numpy's "truth value ... is ambiguous"), a name that is no str
refused; a join on a closed client (FailedPreconditionError on every variant, not
httpx's, grpc's or grpc.aio's own exception)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd  # type: ignore[import-untyped]
import pytest

from featurestore.client import (
    AsyncFeatureClient,
    FailedPreconditionError,
    FeatureClient,
    InvalidArgumentError,
    Status,
)
from tests.integration.client_demo import address, demo_server
from tests.support import CLIENT_DEADLINE_S, ServerProcess, free_port

TRANSPORTS = ["http", "grpc"]
AGE = "user_profile:age"
CTR = "user_activity:ctr_30d"
NAMES = [AGE, CTR]
USERS = {"user_id": [17, 4242, -1]}


@pytest.fixture(scope="module")
def demo(demo_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    yield from demo_server(demo_dir, tmp_path_factory, "client-arguments")


# -- features as any iterable ------------------------------------------------------------

KINDS: dict[str, Callable[[], Iterable[str]]] = {
    "generator": lambda: (name for name in NAMES),
    "iterator": lambda: iter(NAMES),
    "tuple": lambda: tuple(NAMES),
    "numpy array": lambda: np.array(NAMES),
    "numpy object array": lambda: np.array(NAMES, dtype=object),
    "pandas Index": lambda: pd.DataFrame(columns=NAMES).columns,
    "pandas Series": lambda: pd.Series(NAMES),
    "dict keys": lambda: dict.fromkeys(NAMES).keys(),
}


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("kind", KINDS)
def test_features_given_as_any_iterable_of_names_join_as_the_list_does(
    demo: ServerProcess, transport: str, kind: str
) -> None:
    with FeatureClient(address(demo, transport), deadline=CLIENT_DEADLINE_S) as client:
        want = client.join(USERS, NAMES)
        got = client.join(USERS, KINDS[kind]())
    assert got.feature_names == ["user_id", "age", "ctr_30d"]
    assert got.to_dict() == want.to_dict() and got.statuses() == want.statuses()
    assert got["age"].statuses[:2] == [Status.PRESENT] * 2


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_features_given_as_a_generator_join_on_the_asyncio_client_too(
    demo: ServerProcess, transport: str
) -> None:
    async with AsyncFeatureClient(address(demo, transport), deadline=CLIENT_DEADLINE_S) as client:
        got = await client.join(USERS, (name for name in NAMES))
    assert got.feature_names == ["user_id", "age", "ctr_30d"]


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_entity_and_request_data_columns_given_as_generators_join_as_lists_do(
    demo: ServerProcess, transport: str
) -> None:
    """The request_data check read a generator's values and the request went without them
    (review s57, noted by the client fixer)."""
    features = ["user_derived:ctr_x_price_bucket"]
    with FeatureClient(address(demo, transport), deadline=CLIENT_DEADLINE_S) as client:
        want = client.join({"user_id": [17, 42]}, features, request_data={"item_price": [5.0, 75.0]})
        got = client.join(
            {"user_id": (u for u in [17, 42])},  # type: ignore[dict-item]  # (typed Sequence; any iterable is read)
            features,
            request_data={"item_price": (p for p in [5.0, 75.0])},  # type: ignore[dict-item]
        )
    assert got.to_dict() == want.to_dict() and got.statuses() == want.statuses()


@pytest.mark.parametrize(
    ("features", "problem"),
    [
        (lambda: [AGE, 7], "features[1]: 7 (int) is not a 'view:feature' name"),
        (lambda: (n for n in (AGE, b"v:f")), "features[1]: b'v:f' (bytes) is not a 'view:feature' name"),
        (lambda: np.array([1, 2]), "features[0]: 1 (int) is not a 'view:feature' name"),
        (lambda: pd.Index([1.5]), "features[0]: 1.5 (float) is not a 'view:feature' name"),
        (lambda: np.array([NAMES]), "features[0]: ['user_profile:age', 'user_activity:ctr_ (list) is not"),
        (
            lambda: np.array(AGE),
            "features is a list of 'view:feature' names, got the string 'user_profile:age'",
        ),
        (lambda: 7, "features is a list of 'view:feature' names, got int 7"),
    ],
    ids=["int", "bytes", "int array", "float Index", "2-d array", "0-d array", "no iterable"],
)
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_features_holding_something_other_than_names_are_refused_naming_the_item(
    demo: ServerProcess, transport: str, features: Callable[[], Any], problem: str
) -> None:
    client = FeatureClient(address(demo, transport), deadline=CLIENT_DEADLINE_S)
    with client, pytest.raises(InvalidArgumentError) as refused:
        client.join(USERS, features())
    assert refused.value.message.startswith(problem), refused.value.message
    assert isinstance(refused.value, TypeError)


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
