"""Which answer an ``Accept`` header gets: Arrow or JSON (RFC 9110: media types without
regard to case, ``q=0`` is not acceptable)."""

from __future__ import annotations

import pytest

from featurestore.api.arrow_codec import MEDIA_TYPE, wants_arrow
from tests.unit.test_api_edges import client, http_api, make_engine

ARROW = MEDIA_TYPE


@pytest.mark.parametrize(
    ("accept", "arrow"),
    [
        (None, False),
        (ARROW, True),  # the bundled client's Arrow header
        ("Application/Vnd.Apache.Arrow.Stream", True),
        (f"application/json, {ARROW}", True),  # a tie: the type asked for by name
        (f"{ARROW};q=0.9, application/json", False),
        (f"application/json;q=0.5, {ARROW}", True),
        (f"application/json, {ARROW};q=0", False),
        (f"{ARROW} ; Q=0", False),
        (f"{ARROW};q=nonsense", False),
        (f"*/*;q=0.8, {ARROW};q=0.9", True),
        (f"application/*, {ARROW};q=0.1", False),
        (f"application/json;q=0, */*;q=0.8, {ARROW};q=0.5", True),  # JSON refused by its own range
        (f"application/json;q=0.9, */*;q=0.2, {ARROW};q=0.5", False),
        ("application/json", False),
        ("*/*", False),
        ("text/html", False),
        (f"{ARROW}x", False),  # another type whose name starts alike
        ("", False),
    ],
)
def test_an_accept_header_asks_for_arrow_only_when_it_ranks_arrow_at_least_as_high_as_json(
    accept: str | None, arrow: bool
) -> None:
    assert wants_arrow(None if accept is None else accept.encode()) is arrow


@pytest.mark.parametrize(
    ("accept", "ctype"),
    [("Application/VND.apache.arrow.stream", ARROW), (f"{ARROW};q=0", "application/json")],
)
async def test_a_join_is_answered_in_the_type_its_accept_header_ranks_first(accept: str, ctype: str) -> None:
    async with client(http_api(make_engine())) as c:
        r = await c.post(
            "/v1/feature/join",
            json={"entities": {"user_id": [1]}, "features": ["fast:a"]},
            headers={"accept": accept},
        )
    assert r.status_code == 200 and r.headers["content-type"] == ctype
