"""The Redis store's wire layer: RESP for MGET, and the stored row format.

A row is one msgpack array: the view's feature values in schema order, then the event
timestamp in epoch µs (docs/storage.md). Beside a data version's rows, a marker key
holds the layout fingerprint of the definition they were written for; every read
fetches it in the same MGET (it comes back last), so rows are never decoded under a
definition they were not written for.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from operator import add
from typing import Annotated, Any

import msgspec
import pyarrow as pa

from featurestore.errors import Unavailable
from featurestore.model import INT64_MAX, INT64_MIN, DType, FeatureView
from featurestore.rows import EVENT_TIMESTAMP, column_values, row_keys
from featurestore.sources.base import DataMissing, ViewQuery, ViewRead

_encoder = msgspec.msgpack.Encoder()
_decode = msgspec.msgpack.Decoder().decode

# What a stored row holds per feature dtype (what encode_rows writes: rows.column_values);
# a null is allowed for every feature, never for the event timestamp that ends the row.
# int64 and timestamps within int64: msgpack carries up to 2**64 - 1, which no encoding
# of the answer can (Arrow and gRPC would fail or wrap it).
_INT64 = Annotated[int, msgspec.Meta(ge=INT64_MIN, le=INT64_MAX)]
_STORED: dict[DType, Any] = {
    DType.INT64: _INT64,
    DType.FLOAT64: float,  # an int another tool wrote is read as a float
    DType.STRING: str,
    DType.BOOL: bool,
    DType.TIMESTAMP: _INT64,
    DType.FLOAT32_VECTOR: list[float | None],  # a null element another tool wrote is served
}
_row_decoders: dict[str, Callable[[bytes], tuple[Any, ...]]] = {}


def _row_decoder(view: FeatureView) -> Callable[[bytes], tuple[Any, ...]]:
    """A decoder of the view's rows that checks their width and every value's type in C,
    built once per layout (the layout fingerprints the features' names and dtypes): a row
    another tool wrote that does not fit fails its view's read, never the join. No slower
    than decoding untyped and checking the widths after: 100 rows of 8 features of the
    demo's dtypes and a timestamp, 24.4-25.9 against 25.8-26.4 µs; one row, 2.40-2.47
    against 2.43-2.56 (timeit, best of 7, two runs each)."""
    decode = _row_decoders.get(view.layout)
    if decode is None:
        types = (*(_STORED[f.dtype] | None for f in view.features), _INT64)
        decode = _row_decoders[view.layout] = msgspec.msgpack.Decoder(tuple[types]).decode  # type: ignore[valid-type]
    return decode


def pack_command(*args: str) -> bytes:
    """RESP for one command of text arguments (the read connection's handshake)."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        b = arg.encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(b), b))
    return b"".join(parts)


def pack_mget(keys: list[str]) -> bytes:
    """RESP for ``MGET keys...``. redis-py's generic packer costs ~4x more per key
    and is the largest item in a batch-100 profile.

    The frames are formatted as one str and encoded once: a key's length in characters
    is its length in bytes when every character is ASCII, which the encoded length
    equal to the text's shows (UTF-8 writes any other character in 2-4 bytes); a text
    with another character is packed key by key. 100 keys (a view's read at batch 100):
    19.3 µs against 28.0 key by key, with the keys' text built as an f-string per key
    (0.84 against 0.86 for one key); with both, a batch-100 join of the demo's two views
    costs 434 against 462 µs of CPU in process (-5.9%; batch 1 and 10 unchanged within
    the noise). One-off runs, 2026-12-03, 8 interleaved rounds."""
    head = b"*%d\r\n$4\r\nMGET\r\n" % (len(keys) + 1)
    text = "".join([f"${len(k)}\r\n{k}\r\n" for k in keys])
    packed = text.encode()
    if len(packed) == len(text):
        return head + packed
    parts = [head]
    for k in keys:
        b = k.encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(b), b))
    return b"".join(parts)


class KeyNames:
    """One view data version's key names (docs/storage.md): ``{marker}:{text}`` per row
    key, then the marker itself, as a list (Redis Cluster's GETs) or packed as one MGET
    (``mget``: a standalone read).

    ``mget`` writes each key's frame from its text without building the key first, and
    a join's views keyed alike share their keys' text (``RedisSource._named``): the two
    demo views' reads at batch 100 are packed in 24 µs instead of 40 (keys' text +
    ``pack_mget`` per view against one text for both + ``mget`` per view: 39.5-40.7
    against 24.0-24.7 µs), 5.7 against 3.7 at batch 10 and 1.9-2.1 against 1.5 at 1 (timeit,
    best of 9, two runs, 2026-12-06)."""

    __slots__ = ("_heads", "_tail", "marker", "prefix")

    def __init__(self, marker: str) -> None:
        self.marker = marker
        self.prefix = marker + ":"
        self._heads = _Heads(self.prefix)
        self._tail = f"\r\n${len(marker)}\r\n{marker}\r\n"  # ends the last key's frame, then the marker's

    def keys(self, texts: Iterable[str]) -> list[str]:
        """The row keys of ``texts``, then the marker."""
        keys = [self.prefix + t for t in texts]
        keys.append(self.marker)
        return keys

    def mget(self, texts: list[str]) -> bytes:
        """``pack_mget(self.keys(texts))`` for one or more texts: frames joined as one str
        and encoded once, its lengths counted in characters, so right only when every
        character is ASCII (the encoded length equal to the text's shows it, as in
        ``pack_mget``); else packed key by key."""
        text = "\r\n".join(map(add, map(self._heads.__getitem__, map(len, texts)), texts)) + self._tail
        packed = text.encode()
        if len(packed) != len(text):
            return pack_mget(self.keys(texts))
        return b"*%d\r\n$4\r\nMGET\r\n" % (len(texts) + 2) + packed


class _Heads(dict[int, str]):
    """Per key text length: a key's frame up to its text, ``$<length>\\r\\n<prefix>``
    (as many entries as the key texts have lengths)."""

    __slots__ = ("prefix",)

    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def __missing__(self, n: int) -> str:
        head = self[n] = f"${len(self.prefix) + n}\r\n{self.prefix}"
        return head


class LayoutMismatch(Unavailable):
    """A data version's rows were written for another definition of the view."""


class VersionMissing(DataMissing):
    """A published data version's marker is gone, and with it the version's rows."""


def decode_rows(q: ViewQuery, values: list[bytes | None]) -> ViewRead:
    if not values:
        return ViewRead([], [], [[] for _ in q.features])
    marker = values.pop()
    if marker is None and q.data_version > 0:
        # Every written version has a marker, so this version is gone: expired after a
        # newer one was published (this server has not seen the switch) or lost by
        # Redis. Its rows are absent too, and NOT_FOUND would be a wrong answer.
        raise VersionMissing(
            f"view {q.view.name!r}: data version {q.data_version} is not in the store "
            "(expired after a newer publication, or lost); is this server following the registry?"
        )
    if marker is not None and marker.decode() != q.view.layout:
        raise LayoutMismatch(
            f"view {q.view.name!r}: data version {q.data_version} holds rows written for another "
            "definition of the view; materialize the view for its current definition"
        )
    width = len(q.view.features)
    blank = (None,) * (width + 1)
    decode = _row_decoder(q.view)
    try:
        rows = [blank if v is None else decode(v) for v in values]
    except msgspec.ValidationError as e:
        raise _misfit(q, values, e) from None
    found = [v is not None for v in values]
    cols = list(zip(*rows, strict=True)) if rows else [()] * (width + 1)
    return ViewRead(found=found, event_ts_us=list(cols[width]), columns=[list(cols[j]) for j in q.features])


_AT = re.compile(r"at `\$\[(\d+)\]")


def _misfit(q: ViewQuery, values: list[bytes | None], e: msgspec.ValidationError) -> ValueError:
    """Why stored rows do not fit the view, naming the first such row's key and what in it
    (off the hot path: only when a read's rows do not fit): a width the named message
    tells how to fix, else the feature whose value msgspec refused."""
    width, decode = len(q.view.features), _row_decoder(q.view)
    for key, v in zip(q.keys, values, strict=True):
        if v is None:
            continue
        try:
            decode(v)
            continue
        except msgspec.ValidationError as refused:
            e = refused
        try:
            row = _decode(v)
        except (msgspec.DecodeError, RecursionError):  # nested past the decoder's depth
            row = None
        if isinstance(row, list) and len(row) != width + 1:
            return ValueError(
                f"stored rows hold {len(row) - 1} values but the view has {width} features (key {key!r}); "
                "re-materialize the view for its current definition"
            )
        at = _AT.search(str(e))
        i = int(at[1]) if at else -1
        what = (
            q.view.features[i].name if 0 <= i < width else "the event timestamp" if i == width else "the row"
        )
        return ValueError(f"the stored row of key {key!r} does not fit the view: {what}: {e}")
    return ValueError(f"stored rows do not fit the view's types: {e}")


def encode_rows(view: FeatureView, rows: pa.Table, batch: int) -> Iterable[tuple[list[Any], list[bytes]]]:
    for start in range(0, rows.num_rows, batch):
        part = rows.slice(start, batch)
        keys = row_keys(part, view.join_keys)
        cols = [column_values(part.column(f.name), f.dtype) for f in view.features]
        ts = column_values(part.column(EVENT_TIMESTAMP), DType.TIMESTAMP)
        blobs = [_encoder.encode(r) for r in zip(*cols, ts, strict=True)]
        yield keys, blobs
