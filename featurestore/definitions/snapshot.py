"""Immutable registry snapshots and their canonical JSON form.

A snapshot is the unit of publication: version n+1 is written once and never
changed, then ``current`` is swapped to point at it. The fingerprint is the sha256 of
the canonical JSON of the definitions alone, so re-applying identical definitions is
detectable (a no-op) whatever version they would land in.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import msgspec

from featurestore.dag import post_order
from featurestore.definitions.derived import derived_to_dict, parse_derived_views
from featurestore.definitions.parser import _Parser
from featurestore.definitions.stream import parse_stream_views, stream_to_dict
from featurestore.errors import DefinitionError, FailedPrecondition
from featurestore.model import (
    REQUEST_PREFIX,
    BatchSource,
    Definitions,
    DerivedFeature,
    DerivedView,
    DType,
    Entity,
    Feature,
    FeatureService,
    FeatureView,
    freeze_tags,
    make_definitions,
    parse_feature_ref,
)


@dataclass(frozen=True, slots=True)
class RegistrySnapshot:
    version: int
    fingerprint: str
    definitions: Definitions
    created_at: str = ""
    message: str = ""
    # "view:feature" -> the registry version in which that feature's definition last
    # changed (what lineage calls the feature version). Unchanged features keep theirs.
    feature_versions: Mapping[str, int] = field(default_factory=dict)

    @property
    def project(self) -> str:
        return self.definitions.project


def definitions_to_dict(d: Definitions) -> dict[str, Any]:
    doc = _stored_to_dict(d)
    streams = sorted((v for v in d.views.values() if v.stream is not None), key=lambda v: v.name)
    if streams:  # only then, as derived views below
        doc["stream_views"] = [stream_to_dict(v) for v in streams]
    if d.derived_views:  # only then: the fingerprints of files without any stay as they were
        doc["derived_views"] = [
            derived_to_dict(v) for v in sorted(d.derived_views.values(), key=lambda v: v.name)
        ]
    return doc


def _stored_to_dict(d: Definitions) -> dict[str, Any]:
    def tags(t: Any) -> dict[str, str]:
        return dict(sorted(t.items()))

    return {
        "project": d.project,
        "entities": [
            {
                "name": e.name,
                "dtype": e.dtype.value,
                "description": e.description,
                "tags": tags(e.tags),
            }
            for e in sorted(d.entities.values(), key=lambda e: e.name)
        ],
        "feature_views": [
            {
                "name": v.name,
                "entities": list(v.join_keys),
                "features": [
                    {
                        "name": f.name,
                        "dtype": f.dtype.value,
                        "description": f.description,
                        "tags": tags(f.tags),
                    }
                    for f in v.features
                ],
                "online_store": v.online_store,
                "ttl_seconds": v.ttl_seconds,
                "batch_source": None
                if v.batch_source is None
                else {
                    "path": v.batch_source.path,
                    "table": v.batch_source.table,
                    "timestamp_field": v.batch_source.timestamp_field,
                },
                "upstream": list(v.upstream),
                "tags": tags(v.tags),
                "owner": v.owner,
                "description": v.description,
            }
            for v in sorted(d.views.values(), key=lambda v: v.name)
            if v.stream is None
        ],
        "feature_services": [
            {
                "name": s.name,
                "features": [str(r) for r in s.features],
                "tags": tags(s.tags),
                "owner": s.owner,
                "description": s.description,
            }
            for s in sorted(d.services.values(), key=lambda s: s.name)
        ],
    }


def definitions_from_dict(doc: dict[str, Any]) -> Definitions:
    """Inverse of :func:`definitions_to_dict`; the input was validated when applied."""
    try:
        entities = [
            Entity(e["name"], DType(e["dtype"]), e.get("description", ""), freeze_tags(e.get("tags")))
            for e in doc["entities"]
        ]
        by_name = {e.name: e for e in entities}
        views = []
        for v in doc["feature_views"]:
            bs = v.get("batch_source")
            views.append(
                FeatureView(
                    name=v["name"],
                    entities=tuple(by_name[k] for k in v["entities"]),
                    features=tuple(
                        Feature(
                            f["name"],
                            DType(f["dtype"]),
                            f.get("description", ""),
                            freeze_tags(f.get("tags")),
                        )
                        for f in v["features"]
                    ),
                    online_store=v.get("online_store", "default"),
                    ttl_seconds=v.get("ttl_seconds"),
                    batch_source=None
                    if bs is None
                    else BatchSource(bs.get("path"), bs.get("table"), bs["timestamp_field"]),
                    upstream=tuple(v.get("upstream", ())),
                    tags=freeze_tags(v.get("tags")),
                    owner=v.get("owner", ""),
                    description=v.get("description", ""),
                )
            )
        stored = _Parser("stored snapshot", None, check_functions=False)
        views.extend(parse_stream_views(stored, doc.get("stream_views") or [], by_name))
        derived = parse_derived_views(
            stored,
            doc.get("derived_views") or [],
            {v.name: v for v in views},
            check_functions=False,
        )
        services = []
        for s in doc["feature_services"]:
            refs = [parse_feature_ref(r) for r in s["features"]]
            services.append(
                FeatureService(
                    name=s["name"],
                    features=tuple(r for r in refs if r is not None),
                    tags=freeze_tags(s.get("tags")),
                    owner=s.get("owner", ""),
                    description=s.get("description", ""),
                )
            )
        return make_definitions(doc["project"], entities, views, services, list(derived.values()))
    except (KeyError, TypeError, ValueError) as e:
        raise DefinitionError(f"stored snapshot is malformed: {e!r}") from e


_encoder = msgspec.json.Encoder(order="sorted")


def fingerprint(d: Definitions) -> str:
    return hashlib.sha256(_encoder.encode(definitions_to_dict(d))).hexdigest()


def new_snapshot(
    d: Definitions, version: int, message: str = "", previous: RegistrySnapshot | None = None
) -> RegistrySnapshot:
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return RegistrySnapshot(version, fingerprint(d), d, now, message, feature_versions(d, version, previous))


def feature_versions(d: Definitions, version: int, previous: RegistrySnapshot | None) -> dict[str, int]:
    """Carry a feature's version over from ``previous`` when what defines its values
    (dtype, the view's keys, sources and upstream) did not change; else ``version``."""
    same = _unchanged(previous.definitions, d) if previous is not None else set()
    out = {}
    for fid in [*_stored_signatures(d), *_derived_features(d)]:
        old = previous.feature_versions.get(fid) if previous is not None else None
        out[fid] = old if old is not None and fid in same else version
    return out


def _stored_signatures(d: Definitions) -> dict[str, tuple[Any, ...]]:
    return {
        f"{v.name}:{f.name}": (f.dtype, v.join_keys, v.batch_source, v.upstream, v.online_store)
        + (() if v.stream is None else (v.stream,))
        for v in d.views.values()
        for f in v.features
    }


def _derived_features(d: Definitions) -> dict[str, tuple[DerivedView, DerivedFeature]]:
    return {f"{v.name}:{f.name}": (v, f) for v in d.derived_views.values() for f in v.features}


def _unchanged(before: Definitions, after: Definitions) -> set[str]:
    """The features of ``after`` defined as in ``before``. A stored feature: its dtype,
    its view's keys, sources and upstream. A derived feature: its expression (or
    function), what its names stand for, and, transitively, whatever changes the values
    of what it reads (request fields by their dtype); decided bottom-up, each feature
    once after those it reads (a chain may be thousands deep, a graph where many paths
    meet has millions of paths: never walked path by path)."""
    old = _stored_signatures(before)
    same = {fid for fid, sig in _stored_signatures(after).items() if old.get(fid) == sig}
    was, now = _derived_features(before), _derived_features(after)

    def reads(fid: str) -> list[str]:
        return [dep for dep in now[fid][1].depends_on if dep in now]

    for fid in post_order(now, reads):  # the parser refused cycles
        if fid in was and _same_derived(was[fid], now[fid], same):
            same.add(fid)
    return same


def _same_derived(
    before: tuple[DerivedView, DerivedFeature], after: tuple[DerivedView, DerivedFeature], same: set[str]
) -> bool:
    """One derived feature, defined alike in both, reading only what ``same`` holds."""
    (v0, f0), (v1, f1) = before, after
    own = [(f.dtype, f.expression, f.function, f.args, f.depends_on) for f in (f0, f1)]
    if own[0] != own[1]:
        return False
    for dep in f1.depends_on:
        if dep.startswith(REQUEST_PREFIX):
            name = dep.removeprefix(REQUEST_PREFIX)
            dtypes = [next(r.dtype for r in v.request_schema if r.name == name) for v in (v0, v1)]
            if dtypes[0] != dtypes[1]:
                return False
        elif dep not in same:
            return False
    return True


def snapshot_to_json(s: RegistrySnapshot) -> bytes:
    return _encoder.encode(
        {
            "version": s.version,
            "fingerprint": s.fingerprint,
            "created_at": s.created_at,
            "message": s.message,
            "feature_versions": dict(sorted(s.feature_versions.items())),
            "definitions": definitions_to_dict(s.definitions),
        }
    )


class SnapshotCorrupted(FailedPrecondition):
    """A stored snapshot does not parse, says another version than its key, or its
    definitions do not hash to its fingerprint: the registry's content is damaged (a
    hand edit, bit rot), not the caller's input."""


def snapshot_from_json(raw: bytes, version: int | None = None) -> RegistrySnapshot:
    """Parse a stored snapshot, checking it: ``version`` is the one its key (file name)
    says. The fingerprint is checked against the stored definitions as they are (the
    canonical JSON they were hashed from when published), so a later change of
    ``definitions_to_dict`` cannot fail old snapshots."""
    what = f"registry snapshot {version}" if version is not None else "registry snapshot"
    try:
        doc = msgspec.json.decode(raw)
        stored = doc["definitions"]
        snap = RegistrySnapshot(
            version=int(doc["version"]),
            fingerprint=str(doc["fingerprint"]),
            definitions=definitions_from_dict(stored),
            created_at=str(doc.get("created_at", "")),
            message=str(doc.get("message", "")),
            feature_versions={k: int(v) for k, v in (doc.get("feature_versions") or {}).items()},
        )
    except (msgspec.DecodeError, DefinitionError, LookupError, TypeError, ValueError, AttributeError) as e:
        raise SnapshotCorrupted(f"{what} is corrupted: {type(e).__name__}: {e}{_REPAIR}") from e
    if version is not None and snap.version != version:
        raise SnapshotCorrupted(f"{what} is corrupted: it says it is version {snap.version}{_REPAIR}")
    if hashlib.sha256(_encoder.encode(stored)).hexdigest() != snap.fingerprint:
        raise SnapshotCorrupted(
            f"{what} is corrupted: its definitions do not match its fingerprint {snap.fingerprint[:12]}"
            + _REPAIR
        )
    return snap


_REPAIR = " (restore its file or etcd key from a backup; the registry's other snapshots are unaffected)"
