"""What an event must be before the ``filter`` sees it, and what its values may be
(docs/streaming.md, Events): a broken timestamp is malformed whatever the event's kind,
one too far ahead only in an event the view keeps, and a float column value beyond
+-1e292 is malformed, so no window's sum can overflow."""

from __future__ import annotations

import math

import pytest

from featurestore.streaming.decode import MAX_FLOAT, Event, EventDecoder, Malformed
from tests.unit.test_stream_views import DOC, parse

NOW_US = 1_800_000_000_000_000  # 2027-01-15


@pytest.fixture(scope="module")
def decoder() -> EventDecoder:
    return EventDecoder(parse(DOC).views["clicks"])  # filter: {kind: c}; longest window 1h


@pytest.mark.parametrize(
    ("ts", "reason"),
    [
        ('"yesterday"', "timestamp field 'ts': not ISO-8601: 'yesterday'"),
        (  # CPython 3.11's fromisoformat stops at a NUL: read as its first part (review s56)
            '"2026-11-21T12:00:00Z\\u0000anything"',
            "timestamp field 'ts': not ISO-8601: '2026-11-21T12:00:00Z\\x00anything'",
        ),
        ("-5", "timestamp field 'ts': outside 1970..2255 (a wrong timestamp_unit?)"),
        ("100000000000000000000", "timestamp field 'ts': outside 1970..2255 (a wrong timestamp_unit?)"),
        # past float64's range once scaled to µs: was `could not be processed: OverflowError` (review s58)
        ("1e306", "timestamp field 'ts': outside 1970..2255 (a wrong timestamp_unit?)"),
        ("-1e306", "timestamp field 'ts': outside 1970..2255 (a wrong timestamp_unit?)"),
    ],
)
def test_a_broken_timestamp_is_malformed_even_in_an_event_the_filter_drops(
    decoder: EventDecoder, ts: str, reason: str
) -> None:
    """A producer whose timestamps broke hears of it (dead letters, StreamDeadLettersHigh)
    for every kind of event it sends, not only for the kinds the view keeps."""
    latest = NOW_US + decoder.ahead_us
    for kind in ("c", "v"):  # kept, dropped by the filter
        raw = b'{"user": 1, "ts": %s, "kind": "%s"}' % (ts.encode(), kind.encode())
        assert decoder.decode(raw, latest) == Malformed(reason), kind
    assert decoder.decode(b'{"user": 1, "ts": %d, "kind": "v"}' % (NOW_US // 1000), latest) is None


def test_an_event_too_far_ahead_is_malformed_only_when_the_filter_keeps_it(decoder: EventDecoder) -> None:
    """ "Too far ahead" is about this view's windows (its tile would be kept meanwhile): an
    event the view drops is not its concern, e.g. reminders stamped with their due time on a
    shared topic (review s55 round 2: dead-lettered by every view that filtered them out,
    5% of a topic's events, 5x StreamDeadLettersHigh's threshold)."""
    latest = NOW_US + decoder.ahead_us
    two_days_ahead = NOW_US // 1000 + 2 * 86_400_000
    kept = decoder.decode(b'{"user": 1, "ts": %d, "kind": "c"}' % two_days_ahead, latest)
    assert kept == Malformed(
        "event time 2027-01-17T08:00:00+00:00 is more than 60s + the longest window (3600s) ahead "
        "of the processor's clock (a wrong timestamp_unit or clock?)"
    )
    assert decoder.decode(b'{"user": 1, "ts": %d, "kind": "v"}' % two_days_ahead, latest) is None


def test_a_float_column_value_beyond_1e292_is_malformed_so_no_window_sum_can_overflow(
    decoder: EventDecoder,
) -> None:
    """Two values of 1e308 summed to inf, served as null over HTTP and as inf over gRPC.
    Within the bound, even 2^53 values (more events than a count holds exactly) sum to a
    finite float64."""
    [amount] = decoder.column_attrs
    for value, reason in [
        (b"1e308", "Expected `float` <= 1e+292 - at `$.amount`"),
        (b"-1e300", "Expected `float` >= -1e+292 - at `$.amount`"),
        (b"1e400", "Number out of range - at `$.amount`"),
    ]:
        got = decoder.decode(b'{"user": 1, "ts": 1, "kind": "c", "amount": %s}' % value)
        assert got == Malformed(reason), value
    for bound in (MAX_FLOAT, -MAX_FLOAT):
        taken = decoder.decode(b'{"user": 1, "ts": 1, "kind": "c", "amount": %r}' % bound)
        assert isinstance(taken, Event) and getattr(taken.values, amount) == bound
    assert math.isfinite(2.0**53 * MAX_FLOAT)


def test_the_filter_compares_json_types_so_true_is_not_1() -> None:
    """docs/streaming.md: the filter keeps events whose fields equal its values as JSON
    values: a boolean only a boolean, a number any equal number (1 is 1.0), never a
    boolean. It compared with Python's ==, where True == 1 == 1.0 (review s58)."""
    import copy

    doc = copy.deepcopy(DOC)
    doc["stream_views"][0]["source"]["filter"] = {"flag": True, "level": 1}
    dec = EventDecoder(parse(doc).views["clicks"])
    kept = [
        (b"true", b"1"),
        (b"true", b"1.0"),
    ]
    dropped = [(b"1", b"1"), (b"1.0", b"1"), (b'"true"', b"1"), (b"true", b"true"), (b"true", b'"1"')]
    for flag, level in kept + dropped:
        raw = b'{"user": 1, "ts": %d, "flag": %s, "level": %s}' % (NOW_US // 1000, flag, level)
        got = dec.decode(raw, NOW_US + dec.ahead_us)
        assert isinstance(got, Event) if (flag, level) in kept else got is None, (flag, level)
