"""The Cluster read path's key slots (sources/redis_cluster_read.py): CRC16 as Redis
defines it, hash tags honoured, the same slot redis-py's ``key_slot`` gives. Reads by
these slots against a real Cluster: tests/integration/test_redis_cluster_reads.py."""

from __future__ import annotations

import random

import pytest
from redis.crc import key_slot as redis_py_key_slot

from featurestore.sources.redis_cluster_read import SLOTS, key_slot


def test_the_crc_is_the_one_the_redis_cluster_spec_gives_for_its_check_value() -> None:
    # The spec's reference: CRC16 (XMODEM) of "123456789" is 0x31C3.
    assert key_slot(b"123456789") == 0x31C3 % SLOTS


def random_key(rng: random.Random) -> bytes:
    """Key text with braces in every arrangement: tags, empty tags, unclosed, nested."""
    alphabet = b"abc:{}|09\xc3\xbc"
    return bytes(rng.choice(alphabet) for _ in range(rng.randint(0, 24)))


def test_every_key_s_slot_is_the_one_redis_py_computes_for_random_keys_with_and_without_tags() -> None:
    rng = random.Random(56)
    keys = [random_key(rng) for _ in range(20_000)]
    keys += [f"fs:demo:user_profile:v{v}:{u}".encode() for v in (1, 2) for u in range(2_000)]
    assert [key_slot(k) for k in keys] == [redis_py_key_slot(k) for k in keys]


@pytest.mark.parametrize(
    ("key", "same_as"),
    [
        (b"fs:p:v:v1:{user1}a", b"user1"),  # the tag alone is hashed
        (b"{user1}fs:p:v:v1:b", b"user1"),
        (b"fs:{a}{b}", b"a"),  # the first tag
        (b"fs:{}{b}", b"fs:{}{b}"),  # an empty first tag: the whole key
        (b"fs:{a", b"fs:{a"),  # never closed: the whole key
        (b"fs:}{a}", b"a"),  # a } before the first { does not close anything
        (b"fs:{{a}}", b"{a"),  # from the first { to the first } after it
    ],
)
def test_a_hash_tag_decides_the_slot_as_redis_defines_it(key: bytes, same_as: bytes) -> None:
    assert key_slot(key) == key_slot(same_as) == redis_py_key_slot(key)
