"""What the HTTP API refuses, and how it says so, on a real server process (review s56,
findings 2, 5 and 6): an unknown field's name is clipped in the error like every other
name; a push timestamp with anything after its last character (a NUL and more) is a 400
naming column and row; push's 413 for a body read to its end gives the limit, as the
join's; ``x-featurestore-deadline-ms`` is digits only."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.support import ServerProcess, http_post

JOIN = {"entities": {"user_id": [17]}, "features": ["user_profile:age"]}
ITEM = {"item_id": [999_001], "price": [1.5], "category": ["c"]}  # a key no other test reads


def post(
    server: ServerProcess, route: str, body: Any, headers: dict[str, str] | None = None
) -> tuple[int, Any]:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    status, out, _ = http_post(f"{server.url}/v1/feature/{route}", raw, headers)
    return status, json.loads(out)


@pytest.mark.parametrize("route", ["join", "push"])
def test_an_unknown_fields_name_is_repeated_in_at_most_100_characters(
    server: ServerProcess, route: str
) -> None:
    name = "z" * 20_000
    body = {**JOIN, name: 1} if route == "join" else {"feature_view": "item", "rows": ITEM, name: 1}
    status, doc = post(server, route, body)
    assert status == 400, doc
    message = doc["error"]["message"]
    assert (
        message
        == f"invalid {route} request: Object contains unknown field `{'z' * 100}...` (20000 characters)"
    )
    assert len(json.dumps(doc)) < 400  # was 20,117 bytes (and 4 MB for a 4 MB name)


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("event_timestamp", "2026-11-21T12:00:00Z\u0000; anything at all"),
        ("event_timestamp", "2026-11-21T12:00:00Z\u0000"),
        ("opened_at", "2026-01-01T00:00:00Z\u0000garbage"),
        ("opened_at", "2026-01-01T00:00:00Z\n"),
    ],
)
def test_a_push_timestamp_with_anything_after_its_end_is_a_400_naming_column_and_row(
    server: ServerProcess, column: str, value: str
) -> None:
    rows: dict[str, list[Any]] = {
        "merchant_id": ["m-fresh", "m-fresh2"], "risk_score": [0.5, 0.5], "is_blocked": [False, False],
        "opened_at": ["2026-01-01T00:00:00Z"] * 2, "embedding": [[1.0], [1.0]], "txn_count": [1, 1],
        "label": ["x", "x"], "event_timestamp": ["2026-11-21T12:00:00Z"] * 2,
    }  # fmt: skip
    rows[column] = [rows[column][0], value]
    status, doc = post(server, "push", {"feature_view": "merchant", "rows": rows})
    assert status == 400, doc  # was a 200, the value stored as its part before the NUL
    assert doc["error"]["details"][0] == {
        "column": column, "row": 1, "expected": "timestamp", "got": "str", "format": "ISO 8601",
    }  # fmt: skip


@pytest.mark.parametrize("route", ["join", "push"])
def test_a_body_over_the_limit_read_to_its_end_is_a_413_giving_the_limit(
    server: ServerProcess, route: str
) -> None:
    body = b'{"pad": "' + b"x" * 300_000 + b'"}'  # over the server's 262,144, under the drain bound
    status, doc = post(server, route, body)
    assert status == 413, doc
    assert doc["error"]["details"] == [{"limit_bytes": 262_144}]  # push had [] before


@pytest.mark.parametrize("value", ["1_000", "+500", "5_0_0", "500.0", "0x1f4", "-0"])
@pytest.mark.parametrize("route", ["join", "join?asgi=1", "push"])
def test_a_deadline_header_of_anything_but_digits_is_a_400(
    server: ServerProcess, route: str, value: str
) -> None:
    body: Any = JOIN if route.startswith("join") else {"feature_view": "item", "rows": ITEM}
    status, doc = post(server, route, body, {"x-featurestore-deadline-ms": value})
    assert status == 400, doc  # int() took "1_000", "+500" and "5_0_0" before
    assert doc["error"]["message"] == (
        "x-featurestore-deadline-ms must be an integer number of milliseconds (digits only)"
    )


@pytest.mark.parametrize("value", ["500", "0500", " 500 "])
def test_a_deadline_header_of_digits_is_taken(server: ServerProcess, value: str) -> None:
    status, doc = post(server, "join", JOIN, {"x-featurestore-deadline-ms": value})
    assert status == 200, doc
