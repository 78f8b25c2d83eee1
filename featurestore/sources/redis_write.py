"""The Redis store's writes: rows into one data version, batch by batch, each batch with
the version's layout marker (docs/storage.md).

What a write refuses, and why:

* a version holding rows of another definition of the view (its marker says which):
  ``FailedPrecondition``;
* a version that is expiring (replaced; ``expire_version`` gives its marker a TTL
  before its rows): rows written now would be read by no server that follows the
  registry, so the push goes to the version that replaced it, ``Unavailable`` (retry
  shortly). Checked before the first batch and with every batch (in its MULTI/EXEC on
  standalone Redis; on a Cluster in the same pipeline, whose nodes run their commands
  concurrently: not atomically, the check may run before the batch's rows land): a batch
  written as the expiry began is given the marker's TTL before the refusal (without it,
  keys the expiry's scan had passed never expired: review 49, 50 of 89 pushes' keys
  against 200,000 rows);
* with ``create=False`` (a push), a version past 0 that has no marker: the version was
  lost (Redis restarted empty, flushed), since only a materialization creates one
  (``RedisSource.mark_version``, then its rows). Rows written now would bring the
  marker back, every key lost would then read NOT_FOUND, and the data-missing report
  would clear (review 49). ``DataMissing``. A version that had its marker when the
  write began must keep it: each batch sets it only if it exists (``XX``), and a batch
  that finds it gone (Redis lost the data between batches, or a retry reached a Redis
  that restarted empty) takes its rows back out and fails the same way (a
  materialization then fails instead of publishing the rows written after the loss).

And which versions a publication must still expire (``unexpired_versions``): those a
materialization killed after publishing left without a TTL.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import pyarrow as pa

from featurestore.errors import FailedPrecondition, Unavailable
from featurestore.model import FeatureView
from featurestore.rows import key_text
from featurestore.sources.base import DataMissing
from featurestore.sources.redis_wire import KeyNames, encode_rows

T = TypeVar("T")
Idempotent = Callable[[Callable[[], Awaitable[T]]], Awaitable[T]]


async def write_rows(
    client: Any,
    idempotent: Idempotent[Any],
    names: KeyNames,
    view: FeatureView,
    rows: pa.Table,
    data_version: int,
    batch_rows: int,
    *,
    transaction: bool,
    create: bool = True,
) -> int:
    """Upsert conformed ``rows`` into one data version; each batch is one MULTI/EXEC
    (``transaction``: standalone Redis), with the marker; the rows written."""
    p, marker = names.prefix, names.marker

    def check() -> Awaitable[Any]:
        pipe = client.pipeline(transaction=False)
        pipe.get(marker)
        pipe.pttl(marker)
        return pipe.execute()  # type: ignore[no-any-return]

    stored, ttl_ms = await idempotent(check)
    if stored is not None and stored != view.layout.encode():
        raise FailedPrecondition(
            f"view {view.name!r}: data version {data_version} holds rows written for another "
            "definition of the view; materialize the view for its current definition first"
        )
    if stored is not None and ttl_ms >= 0:
        raise _replaced(view, data_version)
    if stored is None and data_version > 0 and not create:
        raise _lost(view, data_version)
    n = 0
    existed = stored is not None and data_version > 0  # (version 0 is pushes' own: recreated)
    for keys, blobs in encode_rows(view, rows, batch_rows):

        def batch(keys: list[Any] = keys, blobs: list[bytes] = blobs) -> Awaitable[Any]:
            pipe = client.pipeline(transaction=transaction)
            # KEEPTTL: a version that starts expiring mid-write must go on expiring; XX: a
            # version that existed must still exist (Redis may have lost it meanwhile)
            pipe.set(marker, view.layout, keepttl=True, xx=existed)
            for k, blob in zip(keys, blobs, strict=True):
                pipe.set(p + key_text(k), blob)
            pipe.pttl(marker)
            return pipe.execute()  # type: ignore[no-any-return]

        replies = await idempotent(batch)
        if replies[0] is None:  # the version was lost during this write: these rows go too
            await asyncio.shield(idempotent(functools.partial(_unlink, client, p, keys)))
            raise _lost(view, data_version)
        if replies[-1] >= 0:  # the expiry began: these rows expire with the version
            await asyncio.shield(idempotent(functools.partial(_expire, client, p, keys, replies[-1])))
            raise _replaced(view, data_version)
        n += len(keys)
    if n == 0 and stored is None:
        # Even a version with no rows says which layout it holds: a read that finds
        # no marker knows the version is gone (expired, or Redis lost its data).
        await idempotent(lambda: client.set(marker, view.layout))
    return n


def _lost(view: FeatureView, data_version: int) -> DataMissing:
    return DataMissing(
        f"view {view.name!r}: data version {data_version} is not in the store (lost, or "
        "expired after a newer publication): re-materialize the view"
    )


def _replaced(view: FeatureView, data_version: int) -> Unavailable:
    return Unavailable(
        f"view {view.name!r}: data version {data_version} has been replaced and is expiring; "
        "write to the version that replaced it (a server that has not switched to it yet: retry shortly)"
    )


def _unlink(client: Any, prefix: str, keys: list[Any]) -> Awaitable[Any]:
    pipe = client.pipeline(transaction=False)
    for k in keys:
        # a raw command: redis-py's ClusterPipeline.unlink() is a coroutine of its own,
        # not a queued command (RedisSource.drop_version says the same)
        pipe.execute_command("UNLINK", prefix + key_text(k))
    return pipe.execute()  # type: ignore[no-any-return]


def _expire(client: Any, prefix: str, keys: list[Any], ttl_ms: int) -> Awaitable[Any]:
    pipe = client.pipeline(transaction=False)
    for k in keys:
        pipe.pexpire(prefix + key_text(k), max(ttl_ms, 1))
    return pipe.execute()  # type: ignore[no-any-return]


# How far below the version it publishes a publication looks for versions left without a
# TTL: a version a killed run left is found by the next publication that completes, and
# only runs that fail or are killed take version numbers between the two (1,000: a run a
# minute failing for 16 hours). Two PTTLs a version in one pipeline: 22 ms for the 1,000
# against a local Redis (0.4 ms for a view's first few versions), 2026-12-07.
RETIRE_LOOKBACK = 1_000


async def unexpired_versions(
    client: Any, versions: Sequence[int], keys: Sequence[tuple[str, str]]
) -> list[int]:
    """Of ``versions``, those whose marker or profile (``keys``, one pair per version) has
    no TTL: the marker never set to expire, or a drop cut short (it is unlinked after the
    rows); the profile, an expiry cut short (``RedisSource.expire_version`` gives the
    marker its TTL first and the profile its TTL last, after the rows')."""
    pipe = client.pipeline(transaction=False)
    for marker, profile in keys:
        pipe.pttl(marker)
        pipe.pttl(profile)
    ttls = await pipe.execute()
    return [v for i, v in enumerate(versions) if -1 in (ttls[2 * i], ttls[2 * i + 1])]
