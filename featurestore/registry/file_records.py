"""The file registry's fingerprint index and per-version records (what
``etcd_history.py`` keeps in etcd), and the file primitives both modules write with.

    registry/fingerprints/{fingerprint}  "<newest version written with it>" (never pruned)
    registry/fingerprint-of/{version}    "<fingerprint> <snapshot file's stamp>" (pruned with it)

A record counts only while its snapshot file is the one it was written beside (the
file's stamp: inode, mtime, size): a snapshot rewritten by hand is read, not trusted.
A snapshot read in full (its fingerprint checked against its content) whose record is
missing or stale gets it written again, so a copied registry (``cp -a``: every inode
new) or one from a release before the records is read in full once, not at every start.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from featurestore.registry.base import check_fingerprint, is_fingerprint
from featurestore.registry.pointers import version_named


class FingerprintRecords:
    def __init__(self, registry_dir: Path, snapshots: Path) -> None:
        self._index = registry_dir / "fingerprints"
        self._records = registry_dir / "fingerprint-of"
        self._snapshots = snapshots

    def published_with(self, fingerprint: str) -> int | None:
        text = read_text(self._index / check_fingerprint(fingerprint))
        # (a file edited by hand into no number: as if unrecorded, the caller scans)
        return version_named(text) if text is not None else None

    def snapshot_fingerprints(self, versions: list[int]) -> dict[int, str | None]:
        out: dict[int, str | None] = {}
        for version in versions:
            fp, _, recorded = (read_text(self._records / str(version)) or "").partition(" ")
            try:
                st = os.stat(self._snapshots / f"{version}.json")
            except FileNotFoundError:  # pruned meanwhile
                continue
            out[version] = fp if is_fingerprint(fp) and recorded == stamp(st) else None
        return out

    def written(self, version: int, fingerprint: str, snapshot_stamp: str) -> None:
        """A snapshot was written (under the registry's lock, as the snapshot: a crash
        before this leaves it without index entry or record, read in full once)."""
        atomic_write(self._index / fingerprint, str(version).encode())
        atomic_write(self._records / str(version), f"{fingerprint} {snapshot_stamp}".encode())

    def read_in_full(self, version: int, fingerprint: str, snapshot_stamp: str) -> None:
        """A snapshot was read and checked: record it unless its record already says so.
        Best effort: a server may see the registry read-only."""
        record = f"{fingerprint} {snapshot_stamp}"
        path = self._records / str(version)
        if read_text(path) == record:
            return
        with contextlib.suppress(OSError):
            atomic_write(path, record.encode())

    def forget(self, version: int) -> None:
        """A pruned snapshot's record (the index keeps its fingerprint: never pruned)."""
        with contextlib.suppress(FileNotFoundError):
            (self._records / str(version)).unlink()


def read_text(path: Path) -> str | None:
    try:
        return path.read_text(errors="replace").strip()
    except (FileNotFoundError, NotADirectoryError):
        return None


def stamp(st: os.stat_result) -> str:
    """A snapshot file's identity: every write is a new inode by rename."""
    return f"{st.st_ino}:{st.st_mtime_ns}:{st.st_size}"


def atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
