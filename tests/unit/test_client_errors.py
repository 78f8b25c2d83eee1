"""The client's errors survive a pickle (a process pool, multiprocessing, a task queue's
worker hands a failed join back that way) as they were: message, code, attributes, and
``str`` without a second code prefix. tests/integration/test_client_types.py pickles a
real server's error over both transports."""

from __future__ import annotations

import multiprocessing
import pickle
from concurrent.futures import ProcessPoolExecutor

import pytest

from featurestore.client import FeatureServiceError, UnavailableError
from featurestore.client.errors import ERRORS, error_for
from featurestore.client.options import unreachable
from featurestore.client.wire import http_error


def pickled(error: FeatureServiceError) -> FeatureServiceError:
    copy = pickle.loads(pickle.dumps(error))
    assert isinstance(copy, FeatureServiceError)
    return copy


@pytest.mark.parametrize("code", [*ERRORS, "FROM_A_NEWER_SERVER"])
def test_every_error_comes_back_from_a_pickle_as_it_was(code: str) -> None:
    error = error_for(code, "feature view 'v' has no feature 'f'", [{"feature": "v:f"}], 404, 1.5)
    copy = pickled(error)
    assert type(copy) is type(error) and copy.code == code
    assert str(copy) == str(error) == f"{code}: feature view 'v' has no feature 'f'"
    assert copy.args == error.args and repr(copy) == repr(error)
    assert (copy.message, copy.details, copy.http_status, copy.retry_after) == (
        "feature view 'v' has no feature 'f'",
        [{"feature": "v:f"}],
        404,
        1.5,
    )


def test_an_unreachable_server_s_error_keeps_whether_a_retry_can_help() -> None:
    untrusted = pickled(unreachable("cannot reach https://h: certificate verify failed", retry=False))
    assert isinstance(untrusted, UnavailableError) and untrusted.retryable is False
    refused = pickled(unreachable("cannot reach http://h: refused"))
    assert isinstance(refused, UnavailableError) and refused.retryable is True


def test_a_shed_joins_error_keeps_the_wait_the_server_asked_for() -> None:
    shed = http_error(503, b'{"error":{"code":"UNAVAILABLE","message":"shed","details":[]}}', "1")
    copy = pickled(shed)
    assert (str(copy), copy.retry_after, copy.http_status) == ("UNAVAILABLE: shed", 1.0, 503)


def _raise_not_found() -> None:
    raise error_for("NOT_FOUND", "feature view 'v' has no feature 'f'")


def test_an_error_raised_in_a_worker_process_reaches_the_caller_as_it_was() -> None:
    # spawn: a fork of a test process with grpc's threads running may hang
    with (
        ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool,
        pytest.raises(FeatureServiceError) as raised,
    ):
        pool.submit(_raise_not_found).result()
    assert str(raised.value) == "NOT_FOUND: feature view 'v' has no feature 'f'"
    assert raised.value.message == "feature view 'v' has no feature 'f'"
