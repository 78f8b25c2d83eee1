"""The registry's pointers: the keys (etcd) or files (file backend) holding one number.

    registry/current        the version of the snapshot servers serve
    registry/next           the last snapshot version handed out
    data/{view}/current     the data version of a view's rows servers read
    data/{view}/next        the last data version of a view handed out

A pointer is registry content that can be edited by hand (``etcdctl put``, an editor),
as a snapshot, a canary record or a watermark can. One that is not a version number is
``MalformedPointer`` (FAILED_PRECONDITION) naming the key, its value (clipped) and how
to restore it, never a ``ValueError``. Reading every view's data version at once
(``read_data_versions``: a server's every read of the registry) leaves a malformed one
out and says so, as ``read_watermarks`` does a malformed watermark: one view's pointer
must not stop a server from applying every other change.

A version is ASCII digits (``int()`` also takes ``'١٢'``, ``'1_0'`` and ``'+1'``), at
most 18 of them (``int()`` refuses over 4,300, and no counter gets past 18). Snapshot
names (keys under ``registry/snapshots/``, files there) are read by the same rule:
a name that is no version number is skipped by both backends.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping

from featurestore.errors import FailedPrecondition, clipped, quoted

log = logging.getLogger("featurestore.registry")

_VERSION = re.compile(rb"[0-9]{1,18}\Z")
_POINTER = re.compile(rb"\s*([0-9]{1,18})\s*\Z")  # (surrounding whitespace: `echo 3 > current`)

# How to restore each pointer, by (its parent's name, its own).
_RESTORE = {
    ("registry", "current"): (
        "write into it the version of the snapshot to serve (the stored versions are the names "
        "under registry/snapshots/)"
    ),
    ("registry", "next"): (
        "write into it the highest version under registry/snapshots/, or delete it (the next "
        "snapshot is then numbered after the highest stored)"
    ),
    ("data", "current"): (
        "write back the data version it held, or delete it and materialize the view again "
        "(`featurestore materialize`)"
    ),
    ("data", "next"): "delete it (the next data version is then allocated above the view's current one)",
}


class MalformedPointer(FailedPrecondition):
    """A registry pointer that holds no version number; ``key``: its etcd key or file."""

    def __init__(self, key: str, raw: bytes, *, data: bool = False) -> None:
        self.key = key
        value = raw.decode(errors="backslashreplace")
        restore = _RESTORE.get(("data" if data else "registry", key.rpartition("/")[2]), "restore it")
        super().__init__(
            f"registry pointer {key} is malformed: {quoted(value)} is no version number; {restore}",
            details=[{"key": key, "value": clipped(value)}],
        )


def parse_pointer(key: str, raw: bytes, *, data: bool = False) -> int:
    """The version number the pointer ``key`` holds (``raw``), or ``MalformedPointer``;
    ``data``: a view's pointer (``data/{view}/...``)."""
    found = _POINTER.match(raw)
    if found is None:
        raise MalformedPointer(key, raw, data=data)
    return int(found.group(1))


def version_named(name: str | bytes) -> int | None:
    """The version a snapshot's key suffix or file stem names, None when it names none
    (an operator's ``3.bak``, ``1²``)."""
    raw = name.encode(errors="replace") if isinstance(name, str) else name
    return int(raw) if _VERSION.match(raw) else None


class DataVersions(dict[str, int]):
    """Every view's data version; ``malformed``: the views whose pointer is malformed
    (left out), with why."""

    def __init__(
        self,
        versions: Mapping[str, int] | None = None,
        malformed: Mapping[str, MalformedPointer] | None = None,
    ) -> None:
        super().__init__(versions or {})
        self.malformed = dict(malformed or {})


def read_data_versions(found: Iterable[tuple[str, str, bytes]]) -> DataVersions:
    """The data versions of ``(view, key, stored value)``; a malformed one is logged and
    left out (``DataVersions.malformed``)."""
    good: dict[str, int] = {}
    bad: dict[str, MalformedPointer] = {}
    for view, key, raw in found:
        try:
            good[view] = parse_pointer(key, raw, data=True)
        except MalformedPointer as e:
            log.warning("data version of view %s is left out: %s", view, e.message)
            bad[view] = e
    return DataVersions(good, bad)
