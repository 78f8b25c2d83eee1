"""Server configuration: defaults < YAML file < environment < command-line flags.

Everything the composition root needs is here as frozen dataclasses. The YAML file
mirrors the dataclass fields one to one (see docs/configuration.md); unknown keys are
errors, so a typo does not silently fall back to a default.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import yaml

from featurestore.errors import InvalidArgument
from lineage.kafka import KafkaSettings


@dataclass(frozen=True, slots=True)
class HttpConfig:
    """The HTTP listener and what a connection may hold of it (docs/configuration.md)."""

    host: str = "127.0.0.1"
    port: int = 8080
    # Longer than common load-balancer idle timeouts (60 s), so the balancer closes an
    # idle connection first instead of sending a request into one the server is closing.
    keep_alive_seconds: float = 75.0
    header_timeout_seconds: float = 10.0  # from accept, or the request's first byte, to its last header
    body_timeout_seconds: float = 30.0  # from the last header to the end of the body (4 MiB at 140 KB/s)
    max_header_bytes: int = 16384  # request line + headers (431 above); the size h11 and Node allow
    max_connections: int = 1000  # per worker; keep well below `ulimit -n`
    backlog: int = 4096  # listen queue per socket; the kernel caps it at net.core.somaxconn


@dataclass(frozen=True, slots=True)
class GrpcConfig:
    """The gRPC listener and grpc core's connection limits (docs/configuration.md)."""

    host: str = "127.0.0.1"
    port: int = 50051
    max_connection_idle_seconds: float = 300.0  # no call for this long: GOAWAY, the client reconnects
    max_connection_age_seconds: float = 1800.0  # GOAWAY (+-10% jitter): spreads clients over workers
    max_connection_age_grace_seconds: float = 30.0  # for calls in flight after that GOAWAY
    keepalive_seconds: float = 60.0  # server pings an idle connection; a dead peer goes after the timeout
    keepalive_timeout_seconds: float = 20.0
    # A client may ping this often, with or without calls in flight (grpc's own default
    # allows one ping per 5 min, which disconnects clients that keep idle channels alive
    # with a keepalive of 10-60 s); faster pings are strikes.
    min_ping_interval_seconds: float = 10.0
    max_ping_strikes: int = 2  # then GOAWAY ENHANCE_YOUR_CALM ("too_many_pings")
    max_metadata_bytes: int = 16384  # request metadata (headers); above it RESOURCE_EXHAUSTED
    handshake_timeout_seconds: float = 10.0  # accept to the end of the HTTP/2 handshake


@dataclass(frozen=True, slots=True)
class RegistryConfig:
    kind: str = "file"  # file | etcd
    path: str = "data/registry"  # file: root directory
    endpoints: tuple[str, ...] = ("http://127.0.0.1:2379",)  # etcd
    definitions: str | None = None  # applied at start-up when it differs from current
    definitions_base_dir: str | None = None  # resolves relative Parquet paths


@dataclass(frozen=True, slots=True)
class StoreConfig:
    kind: str = "memory"  # memory | redis | clickhouse
    options: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    cache: bool = True  # the LRU cache in front (ignored for memory)


@dataclass(frozen=True, slots=True)
class CacheConfig:
    enabled: bool = True
    max_entries: int = 200_000
    ttl_seconds: float = 30.0


@dataclass(frozen=True, slots=True)
class TracingConfig:
    exporter: str = "none"  # none | console | otlp
    sample_ratio: float = 0.01
    otlp_endpoint: str = "http://127.0.0.1:4317"
    service_name: str = "featurestore"


@dataclass(frozen=True, slots=True)
class LimitsConfig:
    max_rows: int = 10_000
    max_body_bytes: int = 4 * 1024 * 1024
    deadline_ms: int = 500


@dataclass(frozen=True, slots=True)
class BoltConfig:
    uri: str = "bolt://127.0.0.1:7687"
    user: str = "neo4j"
    password: str = ""
    database: str = ""  # empty: the server's default database


@dataclass(frozen=True, slots=True)
class LineageConfig:
    enabled: bool = True
    window_seconds: float = 1.0
    queue_size: int = 10_000
    sink: str = "memory"  # memory (straight into the in-process graph) | kafka
    graph: str = "memory"  # memory | bolt (Neo4j)
    graphql: bool = True  # serve /graphql from `graph`
    kafka: KafkaSettings = KafkaSettings()  # lineage.kafka: one type for sink and consumer
    bolt: BoltConfig = BoltConfig()


@dataclass(frozen=True, slots=True)
class DerivedConfig:
    # Generated kernel modules and numba's machine code for them; empty: the user cache
    # ($XDG_CACHE_HOME or ~/.cache)/featurestore/derived. Shared by workers and restarts.
    cache_dir: str = ""


@dataclass(frozen=True, slots=True)
class Config:
    project: str = "demo"
    http: HttpConfig = HttpConfig()
    grpc: GrpcConfig = GrpcConfig()
    workers: int = 1
    registry: RegistryConfig = RegistryConfig()
    stores: Mapping[str, StoreConfig] = field(
        default_factory=lambda: MappingProxyType({"default": StoreConfig()})
    )
    cache: CacheConfig = CacheConfig()
    limits: LimitsConfig = LimitsConfig()
    tracing: TracingConfig = TracingConfig()
    lineage: LineageConfig = LineageConfig()
    derived: DerivedConfig = DerivedConfig()
    log_level: str = "info"
    log_format: str = "text"  # text | json (one object per line, with trace_id and span_id)
    access_log: bool = False


# Environment variables applied over the file, documented in docs/configuration.md.
ENV = {
    "FEATURESTORE_PROJECT": ("project",),
    "FEATURESTORE_HTTP_HOST": ("http", "host"),
    "FEATURESTORE_HTTP_PORT": ("http", "port"),
    "FEATURESTORE_GRPC_HOST": ("grpc", "host"),
    "FEATURESTORE_GRPC_PORT": ("grpc", "port"),
    "FEATURESTORE_WORKERS": ("workers",),
    "FEATURESTORE_REGISTRY_PATH": ("registry", "path"),
    "FEATURESTORE_DEFINITIONS": ("registry", "definitions"),
    "FEATURESTORE_DEADLINE_MS": ("limits", "deadline_ms"),
    "FEATURESTORE_LOG_LEVEL": ("log_level",),
    "FEATURESTORE_LOG_FORMAT": ("log_format",),
    "FEATURESTORE_DERIVED_CACHE_DIR": ("derived", "cache_dir"),
}


def load_config(
    path: str | Path | None = None, overrides: Mapping[tuple[str, ...], Any] | None = None
) -> Config:
    """Build the configuration: defaults, then ``path``, then env vars, then ``overrides``."""
    doc: dict[str, Any] = {}
    if path is not None:
        try:
            loaded = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError) as e:
            raise InvalidArgument(f"config {path}: {e}") from e
        if loaded is not None and not isinstance(loaded, dict):
            raise InvalidArgument(f"{path}: expected a mapping at the top level")
        doc = loaded or {}
    for var, keys in ENV.items():
        if var in os.environ:
            _set(doc, keys, os.environ[var])
    for keys, value in (overrides or {}).items():
        if value is not None:
            _set(doc, keys, value)
    try:
        config: Config = _build(Config, doc, "")
    except _SettingError as e:
        raise InvalidArgument(f"{path or 'config'}: {e.where}: {e.problem}") from None
    return config


class _SettingError(Exception):
    def __init__(self, where: str, problem: str) -> None:
        super().__init__(f"{where}: {problem}")
        self.where = where
        self.problem = problem


def _key(where: str, name: object) -> str:
    return f"{where}.{name}" if where else str(name)


def _set(doc: dict[str, Any], keys: tuple[str, ...], value: Any) -> None:
    for k in keys[:-1]:
        doc = doc.setdefault(k, {})
    doc[keys[-1]] = value


def _build(cls: type[Any], doc: Any, where: str) -> Any:
    if not isinstance(doc, dict):
        raise _SettingError(where or "top level", "expected a mapping")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(doc) - fields.keys())
    if unknown:
        raise _SettingError(_key(where, unknown[0]), f"unknown setting; known: {', '.join(sorted(fields))}")
    kwargs: dict[str, Any] = {}
    for name, value in doc.items():
        kwargs[name] = _convert(cls, fields[name], value, _key(where, name))
    built: Any = cls(**kwargs)
    return built


def _convert(cls: type[Any], f: dataclasses.Field[Any], value: Any, where: str) -> Any:
    default = f.default
    if default is dataclasses.MISSING and f.default_factory is not dataclasses.MISSING:
        default = f.default_factory()
    if f.name == "stores" and cls is Config:
        if not isinstance(value, dict) or not value:
            raise _SettingError(where, "expected a mapping of store name to store settings")
        return MappingProxyType({str(k): _store(v, f"{where}.{k}") for k, v in value.items()})
    if dataclasses.is_dataclass(default):
        return _build(type(default), value, where)
    if isinstance(default, bool):
        if isinstance(value, str):
            return value.strip().lower() in ("1", "true", "yes", "on")
        return bool(value)
    if isinstance(default, int):
        number = _integer(value, where)
        if number <= 0 or (f.name == "port" and number > 65535):
            raise _SettingError(
                where,
                f"expected a positive integer{' up to 65535' if f.name == 'port' else ''}, got {value!r}",
            )
        return number
    if isinstance(default, float):
        try:
            real = float(value)
        except (TypeError, ValueError):
            raise _SettingError(where, f"expected a number, got {value!r}") from None
        if isinstance(value, bool) or not math.isfinite(real):
            raise _SettingError(where, f"expected a number, got {value!r}")
        if f.name in _RATIOS:
            if not 0.0 <= real <= 1.0:
                raise _SettingError(where, f"expected a ratio between 0 and 1, got {value!r}")
        elif real <= 0:
            raise _SettingError(where, f"expected a positive number, got {value!r}")
        return real
    if f.name == "log_level":
        level = str(value).strip().lower()
        if level not in _LOG_LEVELS:
            raise _SettingError(where, f"unknown log level {value!r}; use {', '.join(_LOG_LEVELS)}")
        return level
    if f.name == "log_format":
        fmt = str(value).strip().lower()
        if fmt not in _LOG_FORMATS:
            raise _SettingError(where, f"unknown log format {value!r}; use {', '.join(_LOG_FORMATS)}")
        return fmt
    if isinstance(default, tuple):
        items = value.split(",") if isinstance(value, str) else value
        return tuple(str(x).strip() for x in items)
    return None if value is None else str(value)


_RATIOS = frozenset({"sample_ratio"})
_LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
_LOG_FORMATS = ("text", "json")


def _integer(value: Any, where: str) -> int:
    """An integer, from YAML or an environment variable; 1.5 or "2.0" is refused rather
    than truncated, so a limit never silently differs from what was written."""
    if isinstance(value, bool):
        raise _SettingError(where, f"expected an integer, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            pass
    raise _SettingError(where, f"expected an integer, got {value!r}")


def _store(doc: Any, where: str) -> StoreConfig:
    if not isinstance(doc, dict) or "kind" not in doc:
        raise _SettingError(where, "expected a mapping with 'kind' (memory, redis or clickhouse)")
    doc = dict(doc)
    kind = str(doc.pop("kind"))
    if kind not in ("memory", "redis", "clickhouse"):
        raise _SettingError(f"{where}.kind", f"unknown store kind {kind!r}; use memory, redis or clickhouse")
    cache = doc.pop("cache", True)
    return StoreConfig(kind=kind, options=MappingProxyType(doc), cache=bool(cache))
