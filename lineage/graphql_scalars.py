"""``Long``: the GraphQL scalar of the lineage API's counts and versions.

GraphQL's ``Int`` is signed 32-bit. A feature's SERVED_BY count grows for good (2^31 is
about 25 days of 1,000 values a second) and a run's rows or an event's versions may be up
to 2^63-1 (the range the event decoder accepts, Bolt's integers): past 2^31-1 an ``Int``
field is an error that nulls its parent, the whole ``feature``. ``Long`` takes any
integer from -2^63 to 2^63-1 and is serialized as a JSON number, like ``Int``, so an
answer reads the same as before; JavaScript reads it exactly up to 2^53 (9 * 10^15,
285,000 years of 1,000 values a second). docs/lineage.md, "GraphQL".
"""

from __future__ import annotations

from typing import NewType

import strawberry

MIN_LONG, MAX_LONG = -(2**63), 2**63 - 1


def _serialize(value: int) -> int:
    return int(value)


def _parse(value: object) -> int:
    """A variable's value: an integer (or its decimal text) in the signed 64-bit range."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(f"Long cannot represent {value!r}: expected an integer")
    try:
        number = int(value)
    except ValueError:
        raise ValueError(f"Long cannot represent {value!r}: expected an integer") from None
    if not MIN_LONG <= number <= MAX_LONG:
        raise ValueError(f"Long cannot represent {value!r}: outside the signed 64-bit range")
    return number


Long = NewType("Long", int)
# The schema's scalar_map (lineage/graphql.py) makes it the GraphQL scalar ``Long``.
LONG = strawberry.scalar(
    name="Long",
    description="A signed 64-bit integer, as a JSON number (counts and versions outgrow Int's 32 bits).",
    serialize=_serialize,
    parse_value=_parse,
)
