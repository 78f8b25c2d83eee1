"""RESP framing of the Redis store's MGET (sources/redis_wire.py): the one-encode path
for ASCII keys and the key-by-key path for any other character frame keys alike. Reads
of such keys against a real redis-server: tests/contract/test_online_source.py."""

from __future__ import annotations

import pytest

from featurestore.sources.redis_wire import pack_mget


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
