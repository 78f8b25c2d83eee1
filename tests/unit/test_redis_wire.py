"""RESP framing of the Redis store's MGET (sources/redis_wire.py): the one-encode path
for ASCII keys and the key-by-key path for any other character frame keys alike. Reads
of such keys against a real redis-server: tests/contract/test_online_source.py."""

from __future__ import annotations

import msgspec
import pytest

from featurestore.model import DType, Entity, Feature, FeatureView
from featurestore.sources.base import ViewQuery
from featurestore.sources.redis_wire import KeyNames, decode_rows, pack_mget


def resp(keys: list[str]) -> bytes:
    """The RESP array of MGET and the keys, each framed by its length in UTF-8 bytes."""
    out = b"*%d\r\n$4\r\nMGET\r\n" % (len(keys) + 1)
    for k in keys:
        b = k.encode()
        out += b"$%d\r\n%s\r\n" % (len(b), b)
    return out


@pytest.mark.parametrize(
    "keys",
    [
        ["fs:demo:user_activity:v1:1"],
        [f"fs:demo:user_activity:v1:{i}" for i in range(100)] + ["fs:demo:user_activity:v1"],
        ["fs:p:shops:v1:", "fs:p:shops:v1:pipe|sep", "fs:p:shops:v1:spaces and\nnewline\r\n$3"],
        ["fs:p:shops:v1:ünïcödé", "fs:p:shops:v1:plain"],  # 2-byte characters
        ["fs:p:shops:v1:plain", "fs:p:shops:v1:店", "fs:p:shops:v1:😀"],  # 3 and 4 bytes, after ASCII
    ],
)
def test_mget_frames_every_key_by_its_length_in_bytes(keys: list[str]) -> None:
    assert pack_mget(keys) == resp(keys)


def test_an_mget_of_no_keys_is_the_bare_command() -> None:
    assert pack_mget([]) == b"*1\r\n$4\r\nMGET\r\n"


@pytest.mark.parametrize(
    ("marker", "texts"),
    [
        ("fs:demo:user_activity:v1", ["1"]),
        ("fs:demo:user_activity:v1", [str(i) for i in (7, 100000, 42, 3, 99999, 12345678901234567890)]),
        ("fs:p:shops:v1", ["", "pipe|sep", "spaces and\nnewline\r\n$3"]),
        ("fs:p:shops:v1", ["plain", "店", "😀", "ünïcödé"]),  # 2-4 bytes, after ASCII
        ("fs:prøject:shops:v1", ["1", "2"]),  # a character outside ASCII in the prefix and the marker
    ],
)
def test_a_views_mget_from_key_texts_is_the_mget_of_its_keys_then_its_marker(
    marker: str, texts: list[str]
) -> None:
    names = KeyNames(marker)
    keys = [f"{marker}:{t}" for t in texts] + [marker]
    assert names.keys(texts) == keys
    assert names.mget(texts) == resp(keys)
    assert names.mget(texts) == resp(keys)  # again, with the lengths' frames it kept


VIEW = FeatureView(
    "shops", (Entity("shop_id", DType.INT64),), (Feature("a", DType.INT64), Feature("b", DType.FLOAT64))
)


def stored(*values: object) -> bytes:
    return msgspec.msgpack.encode(list(values))


def query() -> ViewQuery:
    return ViewQuery(VIEW, [1, 2, 3], [1, 0], data_version=1)


def test_rows_decode_into_the_asked_columns_with_absent_keys_not_found() -> None:
    read = decode_rows(query(), [stored(1, 0.5, 10), None, stored(2, 1.5, 20), VIEW.layout.encode()])
    assert read.found == [True, False, True]
    assert read.columns[0][0::2] == [0.5, 1.5] and read.columns[1][0::2] == [1, 2]
    assert read.event_ts_us[0::2] == [10, 20]


@pytest.mark.parametrize(
    ("rows", "held"),
    [
        ([stored(1, 0.5, 10), stored(2, 20), stored(3, 1.5, 30)], 1),  # one short row among good ones
        ([stored(1, 0.5, 9, 10), stored(2, 1.5, 9, 20), None], 3),  # every row one value too wide
        ([stored(1, 10), stored(2, 20), stored(3, 30)], 1),  # every row one value short
    ],
)
def test_rows_of_another_width_than_the_view_are_refused_with_the_count(
    rows: list[bytes | None], held: int
) -> None:
    with pytest.raises(ValueError, match=f"stored rows hold {held} values but the view has 2 features"):
        decode_rows(query(), [*rows, VIEW.layout.encode()])


@pytest.mark.parametrize(
    ("row", "what"),
    [
        (stored(1, 0.5, None), "the event timestamp"),  # null
        (stored(1, 0.5, "yesterday"), "the event timestamp"),
        (stored(1, 0.5, 2**64 - 1), "the event timestamp"),  # msgpack's uint64: no encoding holds it
        (stored(1.5, 0.5, 10), "a"),  # a float in the int64 feature
        (stored(True, 0.5, 10), "a"),  # a bool is no int64
        (stored(2**63, 0.5, 10), "a"),  # past int64
        (msgspec.msgpack.encode(5), "the row"),  # not a row
    ],
)
def test_a_row_whose_values_do_not_fit_the_view_s_types_is_refused_naming_its_key_and_feature(
    row: bytes, what: str
) -> None:
    with pytest.raises(
        ValueError, match=rf"^the stored row of key 2 does not fit the view: {what}: Expected"
    ):
        decode_rows(query(), [stored(2, 1.5, 20), row, None, VIEW.layout.encode()])


def test_a_row_nested_past_the_decoder_s_depth_is_refused_for_its_view_only() -> None:
    deep = b"\x91" * 5_000 + msgspec.msgpack.encode(1.0)  # [[[...1.0...]]], 5,000 arrays deep
    row = b"\x93" + msgspec.msgpack.encode(1) + deep + msgspec.msgpack.encode(10)  # [1, deep, 10]
    with pytest.raises(ValueError, match=r"^the stored row of key 1 does not fit the view: b: Expected"):
        decode_rows(query(), [row, None, None, VIEW.layout.encode()])


def test_an_integer_stored_for_a_float64_feature_is_read_as_a_float() -> None:
    read = decode_rows(query(), [stored(1, 2, 10), None, None, VIEW.layout.encode()])
    assert read.columns[0][0] == 2.0 and isinstance(read.columns[0][0], float)
