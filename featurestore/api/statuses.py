"""How each per-value ``Status`` travels on each wire format: one table.

JSON sends the name; Arrow sends an int8 code into a dictionary of the names; protobuf
sends the ``featurestore.v1.Status`` number, which equals the ``Status`` value so a
status list goes into a response without a per-row mapping
(``tests/unit/test_statuses.py`` checks the proto enum against this table). The lookups
the codecs index per row are tuples by ``Status`` value, built once here.
"""

from __future__ import annotations

from typing import NamedTuple

from featurestore.model import Status


class WireStatus(NamedTuple):
    name: str  # JSON string, Arrow dictionary value, protobuf enum value name
    arrow_code: int  # index into ARROW_DICTIONARY
    proto_number: int  # featurestore.v1.Status number


WIRE: dict[Status, WireStatus] = {
    Status.PRESENT: WireStatus("PRESENT", 0, 1),
    Status.NOT_FOUND: WireStatus("NOT_FOUND", 1, 2),
    Status.OUTSIDE_MAX_AGE: WireStatus("OUTSIDE_MAX_AGE", 2, 3),
    Status.UNAVAILABLE: WireStatus("UNAVAILABLE", 3, 4),
}

# Every name, in Status order (the documented enum of the JSON response).
NAMES: tuple[str, ...] = tuple(WIRE[s].name for s in Status)
PRESENT_NAME = WIRE[Status.PRESENT].name
PRESENT_ARROW_CODE = WIRE[Status.PRESENT].arrow_code

_BY_VALUE = {int(s): w for s, w in WIRE.items()}
_SLOTS = max(_BY_VALUE) + 1  # slot 0 (protobuf's STATUS_UNSPECIFIED) is never produced
JSON_NAME_BY_VALUE: tuple[str, ...] = tuple(
    _BY_VALUE[v].name if v in _BY_VALUE else "" for v in range(_SLOTS)
)
ARROW_CODE_BY_VALUE: tuple[int, ...] = tuple(
    _BY_VALUE[v].arrow_code if v in _BY_VALUE else -1 for v in range(_SLOTS)
)
ARROW_DICTIONARY: tuple[str, ...] = tuple(w.name for w in sorted(WIRE.values(), key=lambda w: w.arrow_code))
