"""The read path's own Redis connection gives error replies the classes redis-py's parser
gives them (the store's retry rules and circuit read those classes). redis-py's table is
private (``redis._parsers.base.BaseParser``): this test fails when it changes, so the copy
in sources/redis_connection.py is checked again."""

from __future__ import annotations

from typing import Any

import pytest
from redis import exceptions as redis_errors
from redis._parsers.base import BaseParser

from featurestore.sources.redis_connection import _ERR_CLASSES, _ERROR_CLASSES, classify

REPLIES = [
    *(f"{code} some text" for code in _ERROR_CLASSES),
    *(f"ERR {message}" for message in _ERR_CLASSES),
    "ERR unknown command 'FOO'",
    "WRONGTYPE Operation against a key holding the wrong kind of value",
]


@pytest.mark.parametrize("reply", REPLIES)
def test_an_error_reply_gets_the_class_redis_py_gives_it(reply: str) -> None:
    ours = classify(redis_errors.ResponseError(reply))
    assert type(ours) is type(BaseParser.parse_error(reply))  # type: ignore[no-untyped-call]
    assert str(ours) == reply  # the whole text, code and all


def test_every_class_redis_py_gives_that_the_store_tells_apart_is_in_the_copy() -> None:
    told_apart = (
        redis_errors.ConnectionError,
        redis_errors.AuthenticationError,
        redis_errors.BusyLoadingError,
    )
    table: dict[str, Any] = BaseParser.EXCEPTION_CLASSES
    for code, cls in table.items():
        if isinstance(cls, dict):
            for message, sub in cls.items():
                if issubclass(sub, told_apart):
                    assert _ERR_CLASSES.get(message) is sub, message
        elif issubclass(cls, told_apart):
            assert _ERROR_CLASSES.get(code) is cls, code
