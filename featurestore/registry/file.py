"""File registry: the etcd layout mirrored on a local directory.

    {root}/{project}/registry/snapshots/{version}.json   immutable
    {root}/{project}/registry/current                    "<version>"
    {root}/{project}/registry/next                       "<last snapshot version written>"
    {root}/{project}/registry/fingerprints/{fingerprint} "<newest version written with it>" (never pruned)
    {root}/{project}/registry/fingerprint-of/{version}   "<fingerprint> <snapshot file's stamp>" (file_records.py)
    {root}/{project}/data/{view}/current                 "<data version>"
    {root}/{project}/data/{view}/watermark               {"data_version", "event_time_us"[, "start_us"]}
    {root}/{project}/canary/{service}                    {"candidate_version", "share", ...}

Compare-and-swap holds an exclusive ``flock`` on ``{root}/{project}/.lock`` while it
compares and replaces; every write is a temp file + fsync + ``os.replace``, so a
reader sees the old file or the new one, never a torn one, and a crash mid-write
leaves ``current`` untouched. Several processes on one host may share a root.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import os
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

from featurestore.definitions.snapshot import (
    RegistrySnapshot,
    new_snapshot,
    snapshot_from_json,
    snapshot_to_json,
)
from featurestore.errors import FailedPrecondition, NotFound
from featurestore.model import Definitions
from featurestore.registry.base import (
    Canaries,
    Canary,
    MalformedCanary,
    RegistryHealth,
    Watermark,
    prunable,
    read_canaries,
    read_canary,
    read_watermarks,
)
from featurestore.registry.conflicts import conflict
from featurestore.registry.file_records import FingerprintRecords, atomic_write
from featurestore.registry.file_records import stamp as file_stamp
from featurestore.registry.pointers import DataVersions, parse_pointer, read_data_versions, version_named
from featurestore.registry.snapshot_cache import SnapshotCache


class FileRegistry:
    def __init__(self, root: str | Path, project: str, poll_interval: float = 0.2) -> None:
        self.root = Path(root) / project
        self._project = project
        self.poll_interval = poll_interval
        self._snapshots = self.root / "registry" / "snapshots"
        self._current = self.root / "registry" / "current"
        self._next = self.root / "registry" / "next"  # the last snapshot version handed out
        self._records = FingerprintRecords(self.root / "registry", self._snapshots)
        self._data = self.root / "data"
        self._canary = self.root / "canary"
        self._cache = SnapshotCache[tuple[tuple[int, int, int], RegistrySnapshot]]()
        # Set by the change feed's polls: whether the project's directory was there (a
        # registry moved or unmounted is one the server no longer reads), and when last.
        self._found: bool | None = None
        self._found_at = time.monotonic()

    @property
    def project(self) -> str:
        return self._project

    def health(self) -> RegistryHealth:
        if self._found is None:  # not followed (a CLI): every call reads the directory
            return RegistryHealth(connected=True, seconds_since_contact=0.0)
        return RegistryHealth(connected=self._found, seconds_since_contact=time.monotonic() - self._found_at)

    # -- reads -----------------------------------------------------------------------

    async def current(self) -> RegistrySnapshot | None:
        version = await asyncio.to_thread(_read_pointer, self._current)
        self._cache.pin("current", () if version is None else (version,))
        return None if version is None else await self.get(version)

    async def get(self, version: int) -> RegistrySnapshot:
        return await asyncio.to_thread(self._get, version)

    def _get(self, version: int) -> RegistrySnapshot:
        """A snapshot is immutable once written, but its file is not: a version deleted
        by hand and written again, or edited, must not be served from the cache. The
        cache is keyed by the file's identity (inode, mtime, size; every write is a new
        inode by rename), read from the open file so stamp and content agree.

        A file that cannot be read (a version too long for a file name, a directory, an
        I/O error) is ``NotFound`` or ``FailedPrecondition``, as etcd's answers are:
        an ``OSError`` escaped ``load_state`` and a canary candidate held back current."""
        path = self._snapshots / f"{version}.json"
        try:
            with open(path, "rb") as fh:
                st = os.fstat(fh.fileno())
                stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
                cached = self._cache.get(version)
                if cached is not None and cached[0] == stamp:
                    return cached[1]
                raw = fh.read()
        except (FileNotFoundError, NotADirectoryError):
            raise NotFound(f"registry snapshot {version} does not exist") from None
        except OSError as e:
            if e.errno == errno.ENAMETOOLONG:  # no file can hold it: no such snapshot
                raise NotFound(f"registry snapshot {version} does not exist") from None
            raise FailedPrecondition(
                f"registry snapshot {version} cannot be read: {e.strerror}: {path}"
            ) from e
        snap = snapshot_from_json(raw, version)  # (its fingerprint checked against its content)
        self._cache.put(version, (stamp, snap))
        self._records.read_in_full(version, snap.fingerprint, file_stamp(st))
        return snap

    async def versions(self) -> list[int]:
        return await asyncio.to_thread(self._list_versions)

    async def published_with(self, fingerprint: str) -> int | None:
        return await asyncio.to_thread(self._records.published_with, fingerprint)

    async def snapshot_fingerprints(self) -> dict[int, str | None]:
        return await asyncio.to_thread(lambda: self._records.snapshot_fingerprints(self._list_versions()))

    async def data_versions(self) -> DataVersions:
        return await asyncio.to_thread(self._read_data_versions)

    async def canaries(self) -> Canaries:
        found = await asyncio.to_thread(self._read_canaries)
        self._cache.pin(
            "canaries", (v for c in found.values() for v in (c.candidate_version, c.base_version))
        )
        return found

    async def prune(self, keep: int, *, dry_run: bool = False) -> list[int]:
        return await asyncio.to_thread(self._prune, keep, dry_run)

    # -- compare-and-swap writes ----------------------------------------------------

    async def publish(
        self, definitions: Definitions, *, expected_version: int | None, message: str = ""
    ) -> RegistrySnapshot:
        return await asyncio.to_thread(self._publish, definitions, expected_version, message)

    async def stage(self, definitions: Definitions, *, message: str = "") -> RegistrySnapshot:
        return await asyncio.to_thread(self._stage, definitions, message)

    async def set_current(self, version: int, *, expected_version: int | None) -> None:
        await asyncio.to_thread(self._set_current, version, expected_version)

    async def promote(self, service: str, canary: Canary) -> None:
        await asyncio.to_thread(self._promote, service, canary)

    async def swap_data_version(self, view: str, *, expected: int, new: int) -> None:
        await asyncio.to_thread(self._swap_data_version, view, expected, new)

    async def set_canary(
        self, service: str, canary: Canary | None, *, expected: Canary | MalformedCanary | None
    ) -> None:
        await asyncio.to_thread(self._set_canary, service, canary, expected)

    async def allocate_data_version(self, view: str) -> int:
        return await asyncio.to_thread(self._allocate_data_version, view)

    async def watermark(self, view: str) -> Watermark | None:
        return await asyncio.to_thread(self._read_watermark, view)

    async def watermarks(self) -> dict[str, Watermark]:
        return read_watermarks(await asyncio.to_thread(self._read_watermark_files))

    async def data_state(self) -> tuple[DataVersions, dict[str, Watermark]]:
        versions, marks = await asyncio.to_thread(
            lambda: (self._read_data_versions(), self._read_watermark_files())
        )
        return versions, read_watermarks(marks)

    def _read_watermark_files(self) -> list[tuple[str, bytes]]:
        if not self._data.is_dir():
            return []
        out = []
        for d in self._data.iterdir():
            with contextlib.suppress(FileNotFoundError, NotADirectoryError):
                out.append((d.name, (d / "watermark").read_bytes()))
        return out

    async def set_watermark(self, view: str, mark: Watermark, *, expected: Watermark | None) -> None:
        await asyncio.to_thread(self._set_watermark, view, mark, expected)

    def _read_watermark(self, view: str) -> Watermark | None:
        path = self._data / view / "watermark"
        return Watermark.from_json(path.read_bytes()) if path.exists() else None

    def _set_watermark(self, view: str, mark: Watermark, expected: Watermark | None) -> None:
        with self._locked():
            actual = self._read_watermark(view)
            if actual != expected:
                raise conflict(f"watermark of view {view!r}", expected, actual)
            atomic_write(self._data / view / "watermark", mark.to_json())

    def _publish(self, definitions: Definitions, expected: int | None, message: str) -> RegistrySnapshot:
        with self._locked():
            current = _read_pointer(self._current)
            if current != expected:
                raise conflict("registry current", expected, current)
            snap = self._write_snapshot(definitions, message, current)
            atomic_write(self._current, str(snap.version).encode())
            return snap

    def _stage(self, definitions: Definitions, message: str) -> RegistrySnapshot:
        with self._locked():
            return self._write_snapshot(definitions, message, _read_pointer(self._current))

    def _write_snapshot(
        self, definitions: Definitions, message: str, current: int | None
    ) -> RegistrySnapshot:
        # From a counter, not max(existing) + 1: a version deleted by hand (an aborted
        # canary's candidate) is never handed out again.
        version = max(_read_pointer(self._next) or 0, *self._list_versions(), 0) + 1
        previous = None
        if current is not None:
            previous = self._get(current)
        snap = new_snapshot(definitions, version, message, previous)
        path = self._snapshots / f"{version}.json"
        atomic_write(path, snapshot_to_json(snap))
        self._records.written(version, snap.fingerprint, file_stamp(path.stat()))
        atomic_write(self._next, str(version).encode())
        return snap

    def _set_current(self, version: int, expected: int | None) -> None:
        with self._locked():
            if not self._exists(version):
                raise NotFound(f"registry snapshot {version} does not exist")
            current = _read_pointer(self._current)
            if current != expected:
                raise conflict("registry current", expected, current)
            atomic_write(self._current, str(version).encode())

    def _set_canary(
        self, service: str, canary: Canary | None, expected: Canary | MalformedCanary | None
    ) -> None:
        path = self._canary / service
        with self._locked():
            actual = read_canary(service, path.read_bytes()) if path.exists() else None
            if actual != expected:
                raise conflict(f"canary of service {service!r}", expected, actual)
            if canary is not None and not self._exists(canary.candidate_version):
                # (under the lock: a prune cannot delete it before the record is written)
                raise NotFound(f"registry snapshot {canary.candidate_version} does not exist")
            if canary is None:
                path.unlink()
            else:
                atomic_write(path, canary.to_json())

    def _promote(self, service: str, canary: Canary) -> None:
        path = self._canary / service
        with self._locked():
            actual = read_canary(service, path.read_bytes()) if path.exists() else None
            if actual != canary:
                raise conflict(f"canary of service {service!r}", canary, actual)
            if not self._exists(canary.candidate_version):
                raise NotFound(f"registry snapshot {canary.candidate_version} does not exist")
            current = _read_pointer(self._current)
            if current != canary.base_version:
                raise conflict("registry current", canary.base_version, current)
            # Under the lock no other writer sees the state in between; a crash there
            # leaves the candidate current with its canary still recorded, and promoting
            # again ends it (RegistryAdmin.canary_promote).
            atomic_write(self._current, str(canary.candidate_version).encode())
            path.unlink()

    def _read_canaries(self) -> Canaries:
        if not self._canary.is_dir():
            return Canaries()
        # (read_canaries skips names no service has: an editor's ``ranker_v1~``, temp files)
        return read_canaries((p.name, p.read_bytes()) for p in self._canary.iterdir() if p.is_file())

    def _prune(self, keep: int, dry_run: bool) -> list[int]:
        # Under the lock every writer waits: current and the canaries cannot move
        # between reading them and deleting.
        with self._locked():
            doomed = prunable(
                self._list_versions(), _read_pointer(self._current), self._read_canaries(), keep
            )
            if not dry_run:
                for v in doomed:
                    (self._snapshots / f"{v}.json").unlink(missing_ok=True)
                    self._records.forget(v)
                    self._cache.pop(v)
            return doomed

    def _swap_data_version(self, view: str, expected: int, new: int) -> None:
        path = self._data / view / "current"
        with self._locked():
            current = _read_pointer(path, data=True) or 0
            if current != expected:
                raise conflict(f"data version of view {view!r}", expected, current)
            atomic_write(path, str(new).encode())

    def _allocate_data_version(self, view: str) -> int:
        with self._locked():
            current = _read_pointer(self._data / view / "current", data=True) or 0
            allocated = max(_read_pointer(self._data / view / "next", data=True) or 0, current) + 1
            atomic_write(self._data / view / "next", str(allocated).encode())
            return allocated

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".lock", "a+b") as fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)

    def _list_versions(self) -> list[int]:
        if not self._snapshots.is_dir():
            return []
        # (``1².json``: str.isdigit() takes it, int() does not; etcd skips such a key)
        named = (version_named(p.stem) for p in self._snapshots.glob("*.json"))
        return sorted(v for v in named if v is not None)

    def _exists(self, version: int) -> bool:
        return os.path.exists(self._snapshots / f"{version}.json")  # (False for a name too long)

    def _read_data_versions(self) -> DataVersions:
        if not self._data.is_dir():
            return DataVersions()
        found = ((d.name, d / "current", _read_bytes(d / "current")) for d in self._data.iterdir())
        return read_data_versions((view, str(path), raw) for view, path, raw in found if raw)

    # -- change feed -----------------------------------------------------------------

    async def changes(self) -> AsyncIterator[None]:
        """Poll the pointer files' stamps; cheap (a few stat calls per interval)."""
        last = await asyncio.to_thread(self._stamp)
        yield None  # watching from here on: re-read what changed before
        while True:
            await asyncio.sleep(self.poll_interval)
            stamp = await asyncio.to_thread(self._stamp)
            if stamp != last:
                last = stamp
                yield None

    def _stamp(self) -> tuple[tuple[str, int, int], ...]:
        self._found = self.root.is_dir()
        if self._found:
            self._found_at = time.monotonic()
        files = [self._current]
        if self._data.is_dir():  # (a watermark moves alone in an incremental run)
            files += sorted(d / leaf for d in self._data.iterdir() for leaf in ("current", "watermark"))
        if self._canary.is_dir():
            files += [self._canary, *sorted(self._canary.iterdir())]
        out = []
        for f in files:
            try:
                st = f.stat()
            except FileNotFoundError:
                continue
            out.append((str(f), st.st_mtime_ns, st.st_ino))
        return tuple(out)

    async def close(self) -> None:
        self._cache.clear()


def _read_bytes(path: Path) -> bytes | None:
    """A pointer file's content stripped; None when there is no such file (or it is empty)."""
    try:
        return path.read_bytes().strip() or None
    except (FileNotFoundError, NotADirectoryError):
        return None


def _read_pointer(path: Path, *, data: bool = False) -> int | None:
    raw = _read_bytes(path)
    return None if raw is None else parse_pointer(str(path), raw, data=data)
