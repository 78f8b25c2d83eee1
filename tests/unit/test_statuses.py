"""The one table of how a per-value Status travels on each wire format, and the three
codecs rendering a row of every status by it."""

from __future__ import annotations

import json

import pyarrow as pa

from featurestore.api import arrow_codec, json_codec, proto_codec, statuses
from featurestore.join import JoinResult, ResultColumn, ViewOutcome
from featurestore.model import DType, Status
from featurestore.plan import JoinPlan
from featurestore.v1 import featurestore_pb2 as pb

EVERY = list(Status)


def result_with_every_status() -> JoinResult:
    """One view column whose rows hold each Status once, in enum order."""
    n = len(EVERY)
    outcome = ViewOutcome("v", list(EVERY), [1_000_000] * n, all_present=False)
    values = [7 if s is Status.PRESENT else None for s in EVERY]
    column = ResultColumn("v__a", DType.INT64, values, outcome)
    plan = JoinPlan((), (), frozenset(), (), None)
    return JoinResult([column], registry_version=1, partial=True, rows=n, plan=plan)


def test_the_table_covers_every_status_once_per_wire_format() -> None:
    assert set(statuses.WIRE) == set(Status)
    wires = list(statuses.WIRE.values())
    assert len({w.name for w in wires}) == len(wires)
    assert sorted(w.arrow_code for w in wires) == list(range(len(wires)))
    assert tuple(statuses.WIRE[s].name for s in Status) == statuses.NAMES
    for s, w in statuses.WIRE.items():
        assert statuses.JSON_NAME_BY_VALUE[s] == w.name
        assert statuses.ARROW_DICTIONARY[statuses.ARROW_CODE_BY_VALUE[s]] == w.name


def test_the_proto_enum_has_the_tables_names_and_numbers() -> None:
    # The proto codec sends Status values as they are, so the numbers must be equal too.
    for s, w in statuses.WIRE.items():
        assert pb.Status.Name(w.proto_number) == w.name
        assert w.proto_number == s.value
    named = {name for name, number in pb.Status.items() if number != 0}  # 0: STATUS_UNSPECIFIED
    assert named == {w.name for w in statuses.WIRE.values()}


def test_json_arrow_and_protobuf_render_every_status_by_the_table() -> None:
    result = result_with_every_status()
    names = [statuses.WIRE[s].name for s in EVERY]

    doc = json.loads(json_codec.encode_join(result, "t"))
    assert doc["results"][0]["statuses"] == names

    table = pa.ipc.open_stream(arrow_codec.encode_join_arrow(result, "t")).read_all()
    assert table.column("v__a__status").to_pylist() == names

    resp = pb.JoinResponse.FromString(proto_codec.encode_join(result, "t"))
    assert [pb.Status.Name(s) for s in resp.results[0].statuses] == names
    assert proto_codec.column_values(resp.results[0]) == [7, None, None, None]
