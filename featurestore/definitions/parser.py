"""Feature definitions: the YAML format, its validation, and the parsed ``Definitions``.

Validation is strict on purpose (unknown keys are errors: a typo such as ``tll`` must
not silently drop a TTL) and every message names the file, the object and the field,
e.g. ``features.yaml: feature_views[user_profile].features[age].dtype: ...``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml

from featurestore.definitions.derived import parse_derived_views
from featurestore.definitions.stream import parse_stream_views
from featurestore.definitions.strict_yaml import DuplicateKey, StrictLoader
from featurestore.errors import DefinitionError
from featurestore.model import (
    ENTITY_DTYPES,
    BatchSource,
    Definitions,
    DerivedView,
    DType,
    Entity,
    Feature,
    FeatureRef,
    FeatureService,
    FeatureView,
    freeze_tags,
    make_definitions,
    parse_feature_ref,
)

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}\Z")  # match() with \Z: no trailing newline
_DURATION = re.compile(r"^(\d+)\s*([smhdw]?)$")
_T = TypeVar("_T", Entity, FeatureView, FeatureService)
# Columns every stored row of a view carries besides its keys and features: rows.py's
# EVENT_TIMESTAMP (not imported: it pulls in pyarrow), and the stores' own: ClickHouse's
# __key (sql.KEY_COLUMN) and offline.latest_mask's __row. Only these: another "__" name
# collides with nothing, and loaded before (review s53).
_EVENT_TIME_COLUMN = "event_timestamp"
_STORE_COLUMNS = frozenset({"__key", "__row"})
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def load_definitions(path: str | Path, base_dir: str | Path | None = None) -> Definitions:
    """Read and validate a definitions file.

    Relative ``batch_source.path`` entries resolve against ``base_dir`` (default: the
    file's own folder) so a definitions file can travel with its data.
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise DefinitionError(f"{p}: cannot read definitions: {e.strerror}") from e
    except UnicodeDecodeError as e:  # Latin-1 or UTF-16 from an editor
        raise DefinitionError(f"{p}: not UTF-8 text (at byte {e.start}: {e.reason})") from None
    try:
        doc = yaml.load(text, Loader=StrictLoader)
    except DuplicateKey as e:
        raise DefinitionError(f"{p.name}: {e}") from None
    except yaml.YAMLError as e:
        raise DefinitionError(f"{p.name}: not valid YAML: {e}") from e
    return parse_definitions(doc, source=p.name, base_dir=Path(base_dir) if base_dir else p.parent)


def parse_definitions(
    doc: Any, *, source: str, base_dir: Path | None = None, check_functions: bool = True
) -> Definitions:
    """``check_functions``: import the trusted functions derived features name (off when
    reading a stored snapshot: the compile step reports them where they are served), and
    run the checks a snapshot applied before them may fail (``_Parser.authoring``)."""
    return _Parser(source, base_dir, check_functions).parse(doc)


class _Parser:
    def __init__(self, source: str, base_dir: Path | None, check_functions: bool = True) -> None:
        self.source = source
        self.base_dir = base_dir
        self.check_functions = check_functions
        # Checks added after snapshots were applied (a stream view's aggregated column: 2026-12-05)
        # run for validate and apply only: a stored snapshot that passed the checks of its day
        # loads as it did, not as corrupted (definitions/snapshot.py), until its next apply.
        self.authoring = check_functions

    def fail(self, where: str, msg: str) -> DefinitionError:
        return DefinitionError(f"{self.source}: {where}: {msg}" if where else f"{self.source}: {msg}")

    # -- generic field helpers -------------------------------------------------------

    def mapping(self, obj: Any, where: str, allowed: set[str], required: set[str]) -> dict[str, Any]:
        if not isinstance(obj, dict):
            raise self.fail(where, f"expected a mapping, got {type(obj).__name__}")
        name = obj.get("name")
        if isinstance(name, str) and where.endswith("]"):
            where = f"{where[: where.rindex('[')]}[{name}]"  # name the object, not its index
        unknown = sorted(set(map(str, obj)) - allowed)
        if unknown:
            raise self.fail(
                f"{where}.{unknown[0]}" if where else unknown[0],
                f"unknown field; allowed fields are {', '.join(sorted(allowed))}",
            )
        for key in sorted(required):
            if key not in obj or obj[key] is None:
                raise self.fail(f"{where}.{key}" if where else key, "is required")
        return obj

    def string(self, obj: dict[str, Any], key: str, where: str, default: str = "") -> str:
        v = obj.get(key, default)
        if v is None:
            return default
        if not isinstance(v, str):
            raise self.fail(f"{where}.{key}", f"expected a string, got {type(v).__name__}")
        return v

    def name(self, obj: dict[str, Any], where: str) -> str:
        v = obj.get("name")
        if not isinstance(v, str) or not _NAME.match(v):
            raise self.fail(
                f"{where}.name",
                f"invalid name {v!r}: use letters, digits and '_', not starting with a digit",
            )
        return v

    def not_reserved(self, name: str, where: str) -> None:
        """An entity key, feature or aggregation is a column of the view's stored rows:
        not one the rows carry anyway (materialization failed with Arrow's KeyError, a
        ClickHouse table had the column twice). Since 2026-12-07, so only when authoring:
        a snapshot applied before loads as it did."""
        if not self.authoring:
            return
        if name == _EVENT_TIME_COLUMN:
            raise self.fail(
                where, f"{name!r} is a reserved column name: every stored row has its event time there"
            )
        if name in _STORE_COLUMNS:
            raise self.fail(where, f"{name!r} is a reserved column name: a store's own column")

    def store_name(self, obj: dict[str, Any], where: str) -> str:
        """A view's ``online_store``: a name of the config's ``stores`` (default: default)."""
        store = self.string(obj, "online_store", where, "default")
        if not _NAME.match(store):
            raise self.fail(f"{where}.online_store", f"invalid store name {store!r}")
        return store

    def str_list(self, obj: dict[str, Any], key: str, where: str) -> list[str]:
        v = obj.get(key) or []
        if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
            raise self.fail(f"{where}.{key}", "expected a list of strings")
        return v

    def entity_keys(
        self, obj: dict[str, Any], where: str, entities: Mapping[str, Any], what: str
    ) -> list[str]:
        """A view's ``entities``: at least one, each declared, none twice."""
        keys = self.str_list(obj, "entities", where)
        if not keys:
            raise self.fail(f"{where}.entities", f"{what} needs at least one entity")
        for k in keys:
            if k not in entities:
                raise self.fail(f"{where}.entities", f"unknown entity {k!r}")
        if len(set(keys)) != len(keys):
            raise self.fail(f"{where}.entities", "lists an entity twice")
        return keys

    def tags(self, obj: dict[str, Any], where: str) -> Mapping[str, str]:
        v = obj.get("tags") or {}
        if not isinstance(v, dict):
            raise self.fail(f"{where}.tags", "expected a mapping of tag name to value")
        return freeze_tags(v)

    def dtype(self, obj: dict[str, Any], where: str) -> DType:
        v = obj.get("dtype")
        try:
            return DType(v)
        except ValueError:
            allowed = ", ".join(d.value for d in DType)
            raise self.fail(f"{where}.dtype", f"unknown dtype {v!r}; expected one of {allowed}") from None

    def duration(
        self, v: Any, where: str, least: int = 1, short: str = "must be positive (omit it for no maximum age)"
    ) -> int | None:
        """Seconds (None: not given); fewer than ``least`` fails saying ``short``."""
        if v is None:
            return None
        if isinstance(v, bool):
            raise self.fail(where, f"invalid duration {v!r}")
        if isinstance(v, int):
            seconds = v
        else:
            m = _DURATION.match(str(v).strip())
            if not m:
                raise self.fail(where, f"invalid duration {v!r}; use seconds or e.g. 30s, 15m, 12h, 7d")
            seconds = int(m.group(1)) * _UNITS[m.group(2)]
        if seconds < least:
            raise self.fail(where, short)
        return seconds

    # -- objects ---------------------------------------------------------------------

    def parse(self, doc: Any) -> Definitions:
        top = self.mapping(
            doc if doc is not None else {},
            "",
            {"project", "entities", "feature_views", "stream_views", "derived_views", "feature_services"},
            {"project"},
        )
        project = top["project"]
        if not isinstance(project, str) or not _NAME.match(project):
            raise self.fail("project", f"invalid project name {project!r}")

        entities = self.unique(
            [self.entity(e, i) for i, e in enumerate(self.seq(top, "entities"))], "entities"
        )
        views = self.unique(
            [self.view(v, i, entities) for i, v in enumerate(self.seq(top, "feature_views"))],
            "feature_views",
        )
        for stream_view in parse_stream_views(self, self.seq(top, "stream_views"), entities):
            if stream_view.name in views:
                raise self.fail(f"stream_views[{stream_view.name}]", "a feature view has the same name")
            views[stream_view.name] = stream_view
        derived = parse_derived_views(
            self, self.seq(top, "derived_views"), views, check_functions=self.check_functions
        )
        services = self.unique(
            [
                self.service(s, i, {**views, **derived})
                for i, s in enumerate(self.seq(top, "feature_services"))
            ],
            "feature_services",
        )
        for view in views.values():
            if view.stream is None:
                self.check_upstream(view, views)
        return make_definitions(
            project,
            list(entities.values()),
            list(views.values()),
            list(services.values()),
            list(derived.values()),
        )

    def seq(self, top: dict[str, Any], key: str) -> list[Any]:
        v = top.get(key) or []
        if not isinstance(v, list):
            raise self.fail(key, "expected a list")
        return v

    def unique(self, items: list[_T], where: str) -> dict[str, _T]:
        out: dict[str, _T] = {}
        for item in items:
            if item.name in out:
                raise self.fail(f"{where}[{item.name}]", "defined twice")
            out[item.name] = item
        return out

    def entity(self, obj: Any, i: int) -> Entity:
        where = f"entities[{i}]"
        m = self.mapping(obj, where, {"name", "dtype", "description", "tags"}, {"name", "dtype"})
        name = self.name(m, where)
        where = f"entities[{name}]"
        self.not_reserved(name, where)
        dtype = self.dtype(m, where)
        if dtype not in ENTITY_DTYPES:
            raise self.fail(f"{where}.dtype", "entity keys must be int64 or string")
        return Entity(name, dtype, self.string(m, "description", where), self.tags(m, where))

    def feature(self, obj: Any, view: str, i: int) -> Feature:
        where = f"feature_views[{view}].features[{i}]"
        m = self.mapping(obj, where, {"name", "dtype", "description", "tags"}, {"name", "dtype"})
        name = self.name(m, where)
        where = f"feature_views[{view}].features[{name}]"
        self.not_reserved(name, where)
        return Feature(name, self.dtype(m, where), self.string(m, "description", where), self.tags(m, where))

    def batch_source(self, obj: Any, where: str) -> BatchSource | None:
        if obj is None:
            return None
        m = self.mapping(obj, where, {"path", "table", "timestamp_field"}, set())
        path = self.string(m, "path", where) or None
        table = self.string(m, "table", where) or None
        if (path is None) == (table is None):
            raise self.fail(where, "set exactly one of 'path' (Parquet file) or 'table'")
        if path is not None and self.base_dir is not None and not Path(path).is_absolute():
            path = str((self.base_dir / path).resolve())
        ts = self.string(m, "timestamp_field", where, "event_timestamp")
        return BatchSource(path=path, table=table, timestamp_field=ts)

    def view(self, obj: Any, i: int, entities: Mapping[str, Entity]) -> FeatureView:
        where = f"feature_views[{i}]"
        allowed = {
            "name", "entities", "features", "online_store", "ttl", "batch_source",
            "upstream", "tags", "owner", "description",
        }  # fmt: skip
        m = self.mapping(obj, where, allowed, {"name", "entities", "features"})
        name = self.name(m, where)
        where = f"feature_views[{name}]"
        keys = self.entity_keys(m, where, entities, "a feature view")
        raw_features = m["features"]
        if not isinstance(raw_features, list) or not raw_features:
            raise self.fail(f"{where}.features", "expected a non-empty list of features")
        features = [self.feature(f, name, j) for j, f in enumerate(raw_features)]
        seen: set[str] = set()
        for f in features:
            if f.name in seen:
                raise self.fail(f"{where}.features[{f.name}]", "defined twice")
            if f.name in keys:
                raise self.fail(f"{where}.features[{f.name}]", "has the name of an entity key of the view")
            seen.add(f.name)
        store = self.store_name(m, where)
        return FeatureView(
            name=name,
            entities=tuple(entities[k] for k in keys),
            features=tuple(features),
            online_store=store,
            ttl_seconds=self.duration(m.get("ttl"), f"{where}.ttl"),
            batch_source=self.batch_source(m.get("batch_source"), f"{where}.batch_source"),
            upstream=tuple(self.str_list(m, "upstream", where)),
            tags=self.tags(m, where),
            owner=self.string(m, "owner", where),
            description=self.string(m, "description", where),
        )

    def check_upstream(self, view: FeatureView, views: Mapping[str, FeatureView]) -> None:
        """Upstream entries are feature refs (``view:feature``) or table names."""
        for dep in view.upstream:
            if "://" in dep:
                continue
            ref = parse_feature_ref(dep)
            if ref is None:
                continue  # a bare table name such as ``raw.users``
            target = views.get(ref.view)
            if target is None or target.feature_index(ref.feature) is None:
                raise self.fail(f"feature_views[{view.name}].upstream", f"unknown feature {dep!r}")
            if ref.view == view.name:
                raise self.fail(f"feature_views[{view.name}].upstream", f"{dep!r} is in the view itself")

    def service(self, obj: Any, i: int, views: Mapping[str, FeatureView | DerivedView]) -> FeatureService:
        where = f"feature_services[{i}]"
        allowed = {"name", "features", "tags", "owner", "description"}
        m = self.mapping(obj, where, allowed, {"name", "features"})
        name = self.name(m, where)
        where = f"feature_services[{name}]"
        entries = self.str_list(m, "features", where)
        if not entries:
            raise self.fail(f"{where}.features", "a feature service needs at least one feature")
        refs: list[FeatureRef] = []
        for entry in entries:
            if ":" not in entry:
                view = views.get(entry)
                if view is None:
                    raise self.fail(f"{where}.features", f"unknown feature view {entry!r}")
                refs.extend(FeatureRef(view.name, f.name) for f in view.features)
                continue
            ref = parse_feature_ref(entry)
            if ref is None:
                raise self.fail(f"{where}.features", f"{entry!r} is not 'view' or 'view:feature'")
            view = views.get(ref.view)
            if view is None:
                raise self.fail(f"{where}.features", f"unknown feature view {ref.view!r} in {entry!r}")
            if view.feature_index(ref.feature) is None:
                raise self.fail(f"{where}.features", f"view {ref.view!r} has no feature {ref.feature!r}")
            refs.append(ref)
        if len(set(refs)) != len(refs):
            raise self.fail(f"{where}.features", "lists a feature twice")
        return FeatureService(
            name=name,
            features=tuple(refs),
            tags=self.tags(m, where),
            owner=self.string(m, "owner", where),
            description=self.string(m, "description", where),
        )
