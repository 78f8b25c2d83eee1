"""Lineage event wire format."""

from __future__ import annotations

import pytest

from lineage.events import LineageEvent, MalformedEvent, decode_event, encode_event
from lineage.graph.base import event_time_ms

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
        # each of these used to pass decoding and then fail every graph write of its batch
        (encode_event(EVENT).replace(b"2024-01-01T00:00:07Z", b"yesterday"), "not an ISO 8601 time"),
        (encode_event(EVENT).replace(b"2024-01-01T00:00:07Z", b""), "length >= 1"),
        (encode_event(EVENT).replace(b"2024-01-01T00:00:07Z", b"2024-01-01T00:00:07"), "not in UTC"),
        (encode_event(EVENT).replace(b"2024-01-01T00:00:07Z", b"2024-01-01T02:00:07+02:00"), "not in UTC"),
        (
            encode_event(EVENT).replace(b'"served_count":120', b'"served_count":-1'),
            ">= 0 - at `$.served_count`",
        ),
        (encode_event(EVENT).replace(b'"feature_version":3', b'"feature_version":1e3'), "Expected `int`"),
        (
            encode_event(EVENT).replace(b'"registry_version":7', b'"registry_version":' + b"9" * 20),
            "<= 9223372036854775807 - at `$.registry_version`",
        ),
        (encode_event(EVENT).replace(b"user_profile:age", b":age"), "not 'view:feature'"),
        (
            encode_event(EVENT).replace(b'"service":"featurestore@127.0.0.1:8080"', b'"service":""'),
            "length >= 1",
        ),
        (encode_event(EVENT).replace(b'"trace_ids":[', b'"trace_ids":[7,'), "Expected `str`"),
    ],
)
def test_malformed_events_say_why(raw: bytes, reason: str) -> None:
    with pytest.raises(MalformedEvent) as info:
        decode_event(raw)
    assert reason.lower() in str(info.value).lower()


@pytest.mark.parametrize("stamp", ["2024-01-01T00:00:07.500Z", "2024-01-01T00:00:07+00:00"])
def test_utc_timestamps_in_either_spelling_are_accepted(stamp: str) -> None:
    raw = encode_event(EVENT).replace(b"2024-01-01T00:00:07Z", stamp.encode())
    assert event_time_ms(decode_event(raw)) in (1704067207000, 1704067207500)


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


@pytest.mark.parametrize(
    "raw",
    [
        b'{"zz":' + b"[" * 200_000 + b"]" * 200_000 + b"}",  # an unknown field, skipped by recursing
        encode_event(EVENT).replace(
            b'"upstream_deps":["warehouse.users"]', b'"upstream_deps":' + b"[" * 200_000 + b"]" * 200_000
        ),
        b'{"type":"job_run","schema":' + b"[" * 200_000 + b"]" * 200_000 + b"}",
    ],
    ids=["unknown field", "event field", "job run"],
)
def test_json_nested_too_deeply_is_a_malformed_message_not_a_recursion_error(raw: bytes) -> None:
    """RecursionError escaped both decoders (and the run probe) and ended the consumer."""
    from lineage.runs import decode_run, is_run

    with pytest.raises(MalformedEvent, match="JSON nested too deeply to decode"):
        decode_run(raw) if is_run(raw) else decode_event(raw)
