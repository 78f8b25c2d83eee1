"""A down server is told as one, whatever the deadline: the client stops retrying when
the next pause would reach its deadline, and raises the last failure (UNAVAILABLE, its
cause attached) instead of a try at the deadline that could only say it had passed."""

from __future__ import annotations

import socket

import pytest

from featurestore.client import AsyncFeatureClient, DeadlineExceededError, FeatureClient, UnavailableError

# Of 10 joins (the backoff is random: before, 38 of 40 were DeadlineExceededError), at least
# this many tell the server is down; a pause that overran the deadline on a busy host may
# still end one with DeadlineExceededError (nothing else)
TOLD = 8


def refused_port() -> int:
    with socket.socket() as s:  # bound and closed: nothing listens there
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("scheme", ["http", "grpc"])
def test_a_down_server_is_unavailable_with_the_docs_short_deadline(scheme: str) -> None:
    errors = []
    with FeatureClient(f"{scheme}://127.0.0.1:{refused_port()}", deadline=0.05) as client:
        for _ in range(10):
            with pytest.raises((UnavailableError, DeadlineExceededError)) as failed:
                client.join({"user_id": [1]}, ["v:f"])
            errors.append(failed.value)
    assert sum(isinstance(e, UnavailableError) for e in errors) >= TOLD, errors


@pytest.mark.parametrize("scheme", ["http", "grpc"])
async def test_a_down_server_is_unavailable_to_the_asyncio_client_too(scheme: str) -> None:
    errors = []
    async with AsyncFeatureClient(f"{scheme}://127.0.0.1:{refused_port()}", deadline=0.05) as client:
        for _ in range(10):
            with pytest.raises((UnavailableError, DeadlineExceededError)) as failed:
                await client.join({"user_id": [1]}, ["v:f"])
            errors.append(failed.value)
    assert sum(isinstance(e, UnavailableError) for e in errors) >= TOLD, errors
