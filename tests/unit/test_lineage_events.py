"""Lineage event wire format."""

from __future__ import annotations

import pytest

from lineage.events import LineageEvent, MalformedEvent, decode_event, encode_event

EVENT = LineageEvent(
    feature_id="user_profile:age",
    feature_version=3,
    source_table="redis://fs/user_profile",
    timestamp="2024-01-01T00:00:07Z",
    upstream_deps=["warehouse.users"],
    registry_version=7,
    served_count=120,
    trace_ids=["4bf92f3577b34da6a3ce929d0e0e4736"],
    service="featurestore@127.0.0.1:8080",
)


def test_round_trip() -> None:
    raw = encode_event(EVENT)
    assert decode_event(raw) == EVENT
    assert EVENT.key == b"user_profile:age"


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"not json", "malformed"),
        (b'{"feature_id": "x:y"}', "missing required field"),
        (encode_event(EVENT).replace(b'"served_count":120', b'"served_count":"many"'), "Expected `int`"),
        (encode_event(EVENT).replace(b"user_profile:age", b"user_profile"), "not 'view:feature'"),
        (encode_event(EVENT)[:-1] + b',"extra":1}', "unknown field"),
    ],
)
def test_malformed_events_say_why(raw: bytes, reason: str) -> None:
    with pytest.raises(MalformedEvent) as info:
        decode_event(raw)
    assert reason.lower() in str(info.value).lower()


async def test_in_memory_graph_keeps_a_bounded_history() -> None:
    from msgspec.structs import replace

    from lineage.graph.memory import InMemoryGraph

    graph = InMemoryGraph(max_events=3)
    stamps = [f"2024-01-01T00:00:0{i}Z" for i in range(5)]
    await graph.write_events([replace(EVENT, timestamp=t) for t in stamps])
    await graph.write_events([replace(EVENT, feature_id="user_profile:tenure", timestamp=stamps[0])])
    kept = await graph.events("user_profile:age", None, None, 100)
    assert [e.timestamp for e in kept] == stamps[3:]  # the oldest went first, across features
    assert len(graph._event_keys) == 3  # and their identities with them
    [served] = await graph.served_by("user_profile:age")
    assert served.count == 5 * 120  # counts are not history: they stay
