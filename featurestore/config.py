"""Server configuration: defaults < YAML file < environment < command-line flags.

Sections are frozen stdlib dataclasses (pydantic validates them); ``Config`` is the
pydantic-settings root. Declaring a section: a dataclass here, and one line in ``Config``::

    @dataclass(frozen=True, slots=True)
    class QualityConfig:
        enabled: bool = True
        interval_seconds: Seconds = 60.0   # value types: settings.py

    class Config(BaseSettings):
        ...
        quality: QualityConfig = QualityConfig()

Every setting can then be given in the YAML file (``quality: {interval_seconds: 30}``),
in the environment (``FEATURESTORE_QUALITY__INTERVAL_SECONDS=30``) or, a ``Secret``,
from a file (``password_file: /etc/featurestore/secrets/x``). Unknown keys are errors
(in the environment: under a section; ``FEATURESTORE_NOPE`` is not read, nor refused),
so a typo does not silently fall back to a default. docs/configuration.md lists them.
The listeners' sections (``http``, ``grpc``, ``tls``) and their ports: ``listener_config.py``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator, Field, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from featurestore import logs
from featurestore.env_aliases import aliases_in_force
from featurestore.errors import InvalidArgument
from featurestore.extras import installed
from featurestore.listener_config import GrpcConfig, HttpConfig, TlsConfig, check_ports
from featurestore.settings import (
    Count,
    CountOrZero,
    Integer,
    Name,
    Names,
    NumberOrZero,
    Port,
    Ratio,
    Seconds,
    Secret,
    SettingError,
    _fail,
    describe,
    environment,
    read_config_file,
    resolve_secret_files,
    set_path,
    up_to,
    with_origin,
)
from featurestore.store_config import STORE_KINDS, STORE_SECRETS, StoreConfig, resolve_store_secret_files
from featurestore.store_config import store_doc as _store_doc
from lineage.kafka import RDKAFKA_LOGGER, KafkaSettings

__all__ = [
    "STORE_KINDS",
    "STORE_SECRETS",
    "Count",
    "CountOrZero",
    "GrpcConfig",
    "HttpConfig",
    "Names",
    "Port",
    "Ratio",
    "Seconds",
    "Secret",
    "StoreConfig",
    "TlsConfig",
]


@dataclass(frozen=True, slots=True)
class AuthConfig:
    """Bearer tokens (docs/security.md). With none configured, nothing asks for one."""

    # One token a line, `TOKEN [read,write,admin]` (no scopes: all three); `#` comments.
    tokens_file: str = ""  # re-read when it changes (a rotated Kubernetes Secret)
    tokens: Secret = SecretStr("")  # the same text inline (an environment variable)
    read: bool = True  # joins need a token with scope read
    write: bool = True  # pushes need scope write
    admin: bool = True  # /v1/registry and /graphql need scope admin


@dataclass(frozen=True, slots=True)
class RegistryConfig:
    kind: str = "file"  # file | etcd
    path: str = "data/registry"  # file: root directory
    endpoints: Names = ("http://127.0.0.1:2379",)  # etcd (https:// with the ca_file below: TLS)
    definitions: str | None = None  # applied at start-up when it differs from current
    definitions_base_dir: str | None = None  # resolves relative Parquet paths
    username: str = ""  # etcd authentication (with password)
    password: Secret = SecretStr("")
    ca_file: str = ""  # etcd TLS: the CA of the server's certificate
    cert_file: str = ""  # etcd TLS client certificate (mutual TLS), with key_file
    key_file: str = ""
    max_request_bytes: Count = 1_572_864  # etcd: its --max-request-bytes
    timeout_seconds: Seconds = 2.0  # etcd: each call, and etcd confirming a watch


def _stores(value: Any) -> Any:
    if isinstance(value, Mapping) and not value:
        raise _fail("expected a mapping of store name to store settings", value)
    return value


Stores = Annotated[
    Mapping[str, Annotated[StoreConfig, BeforeValidator(_store_doc)]],
    BeforeValidator(_stores),
    AfterValidator(MappingProxyType),
]


CACHE_ADMISSIONS = ("tinylfu", "none")


def _cache_admission(value: str) -> str:
    policy = value.strip().lower()
    if policy not in CACHE_ADMISSIONS:
        raise _fail(f"unknown cache admission {value!r}; use {', '.join(CACHE_ADMISSIONS)}", value)
    return policy


@dataclass(frozen=True, slots=True)
class CacheConfig:
    enabled: bool = True
    max_entries: Count = 200_000
    ttl_seconds: Seconds = 30.0
    # tinylfu: a full cache admits a store read only if it is asked for more often than
    # the entry it would evict (featurestore/admission.py); none: plain LRU.
    admission: Annotated[str, AfterValidator(_cache_admission)] = "tinylfu"
    # when a read goes past the cache (bypass.py); 0: always consult; None: by store kind
    fills_per_round_trip: NumberOrZero | None = None


TRACING_EXPORTERS = ("none", "console", "otlp")


def _tracing_exporter(value: str) -> str:
    exporter = value.strip().lower()
    if exporter not in TRACING_EXPORTERS:
        raise _fail(f"unknown tracing exporter {value!r}; use {', '.join(TRACING_EXPORTERS)}", value)
    return exporter


@dataclass(frozen=True, slots=True)
class TracingConfig:
    exporter: Annotated[str, AfterValidator(_tracing_exporter)] = "none"
    sample_ratio: Ratio = 0.01
    otlp_endpoint: str = "http://127.0.0.1:4317"
    service_name: str = "featurestore"


@dataclass(frozen=True, slots=True)
class LimitsConfig:
    max_rows: Count = 10_000
    max_body_bytes: Count = 4 * 1024 * 1024
    deadline_ms: Count = 500
    # Load shedding per worker (featurestore/overload.py): at most max_inflight joins in
    # flight, and fewer while a queue stands: the event loop more than shed_target_ms
    # late on average over two 100 ms intervals (5 ms: CoDel's target; the reasons in overload.py).
    shed: bool = True
    max_inflight: Count = 1024
    shed_target_ms: Count = 5
    shed_min_inflight: Count = 64  # no more in flight: a late loop is a stall (overload.MIN_LIMIT)
    shed_floor_ms: Count = 25  # costly joins: the floor is those that fit in it (overload.FLOOR_SECONDS)
    shed_max_rows: Count = 20_000  # entity rows of the joins in flight (row_cap.MAX_ROWS)


@dataclass(frozen=True, slots=True)
class BoltConfig:
    uri: str = "bolt://127.0.0.1:7687"  # bolt+s:// or neo4j+s://: TLS, system CAs
    user: str = "neo4j"
    password: Secret = SecretStr("")
    database: str = ""  # empty: the server's default database
    ca_file: str = ""  # TLS with this CA instead (bolt:// or neo4j:// then encrypted)


@dataclass(frozen=True, slots=True)
class OpenLineageConfig:
    """Job runs as OpenLineage RunEvents (lineage/openlineage.py), off by default."""

    enabled: bool = False
    transport: str = "http"  # http (Marquez, ...) | kafka | file | console
    url: str = ""  # http: the receiver's base url, e.g. http://marquez:5000
    endpoint: str = "api/v1/lineage"  # http: path under url
    api_key: Secret = SecretStr("")  # http: sent as a bearer token when set
    timeout_seconds: Seconds = 5.0  # http
    topic: str = "openlineage"  # kafka
    bootstrap_servers: str = ""  # kafka
    file: str = ""  # file: events appended as JSON lines
    namespace: str = "featurestore"  # the job namespace; datasets are named by their uri


@dataclass(frozen=True, slots=True)
class LineageConfig:
    enabled: bool = True
    window_seconds: Seconds = 1.0
    queue_size: Count = 10_000
    sink: str = "memory"  # memory (straight into the in-process graph) | kafka
    graph: str = "memory"  # memory | bolt (Neo4j)
    # serve /graphql from `graph`; by default when the graphql extra is installed (the core
    # install serves without it), true without the extra fails at start naming it
    graphql: bool = field(default_factory=lambda: installed("strawberry"))
    kafka: KafkaSettings = KafkaSettings()  # lineage.kafka: one type for sink and consumer
    bolt: BoltConfig = BoltConfig()
    openlineage: OpenLineageConfig = OpenLineageConfig()


@dataclass(frozen=True, slots=True)
class StreamConfig:
    """``featurestore stream run`` (docs/streaming.md): the Kafka cluster of the stream
    views' topics (connection and security as lineage.kafka; ``topic`` is unused) and
    the processor's batching."""

    kafka: KafkaSettings = KafkaSettings()
    # messages per consume(): one tile write per batch; confluent-kafka takes up to 1,000,000
    batch_messages: Annotated[Integer, up_to(1_000_000)] = 5000
    poll_seconds: Seconds = 0.05  # how long a consume() waits for a batch to fill
    group_prefix: str = "featurestore-stream"  # consumer group: {group_prefix}-{project}-{view}-{layout}
    lag_interval_seconds: Seconds = 5.0  # how often the consumer lag is measured
    run_window_seconds: Seconds = 60.0  # each processor is a lineage job run per window (docs/lineage.md)


@dataclass(frozen=True, slots=True)
class DerivedConfig:
    # Generated kernel modules and numba's machine code for them; empty: the user cache
    # ($XDG_CACHE_HOME or ~/.cache)/featurestore/derived. Shared by workers and restarts.
    cache_dir: str = ""


@dataclass(frozen=True, slots=True)
class DriftConfig:  # drift tests on served values (docs/quality.md)
    enabled: bool = True
    sample_every: Count = 10  # one join in n is sampled (random gaps of mean n)
    values_per_request: Count = 10  # at most this many values per feature from a sampled join
    window: Count = 1000  # values per test, per feature, per worker
    min_interval_seconds: Seconds = 10.0  # a feature's window rests this long after a test
    alpha: Ratio = 0.05


@dataclass(frozen=True, slots=True)
class ConsistencyConfig:  # the server's scheduled online/offline check (docs/quality.md)
    views: Names = ()  # none: no scheduled check
    interval_seconds: Seconds = 3600.0
    sample: Count = 10_000
    max_mismatch: Ratio = 0.0
    # One view's check, scan of the batch source included; past it the check is an error
    # and the scan stops at its next batch. Unset: the interval. Completions of a view are
    # its check plus the interval apart (plus the other views' checks), and
    # FeatureSkewCheckFailing fires past 3 intervals + 30 min: a timeout of one interval
    # keeps a lone view's checks 2 intervals apart at most, under the alert at any
    # interval; 4 h fired it every round at the hourly default (review 3, s54). A silent
    # ClickHouse is cut sooner, by the source's 60 s receive timeout.
    timeout_seconds: Seconds | None = None


@dataclass(frozen=True, slots=True)
class QualityConfig:
    drift: DriftConfig = DriftConfig()
    consistency: ConsistencyConfig = ConsistencyConfig()


def _log_level(value: str) -> str:
    level = value.strip().lower()
    if level not in LOG_LEVELS:
        raise _fail(f"unknown log level {value!r}; use {', '.join(LOG_LEVELS)}", value)
    return level


LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


def _log_format(value: str) -> str:
    fmt = value.strip().lower()
    if fmt not in LOG_FORMATS:
        raise _fail(f"unknown log format {value!r}; use {', '.join(LOG_FORMATS)}", value)
    return fmt


LOG_FORMATS = ("text", "json")
ENV_PREFIX = "FEATURESTORE_"
EMBEDDED_CLICKHOUSE = "chdb://"
# sources/clickhouse/options.py's check_embedded_workers says the same when a store opens
EMBEDDED_ALONE = (
    "an embedded ClickHouse (chdb://) store lives inside one process: serve it with --workers 1, "
    "or point the store at a ClickHouse server (http://)"
)


class Config(BaseSettings):
    """``Config(**settings)`` is the defaults under ``settings``; ``load_config`` layers
    the file, the environment and the flags."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="forbid", frozen=True
    )

    @classmethod
    def settings_customise_sources(cls, settings_cls: Any, init_settings: Any, *_: Any, **__: Any) -> Any:
        return (init_settings,)  # the environment is read once, by load_config

    project: Name = "demo"  # part of every store's keys and of ClickHouse's table names
    http: HttpConfig = HttpConfig()
    grpc: GrpcConfig = GrpcConfig()
    tls: TlsConfig = TlsConfig()
    auth: AuthConfig = AuthConfig()
    workers: Count = 1
    registry: RegistryConfig = RegistryConfig()
    stores: Stores = Field(default_factory=lambda: MappingProxyType({"default": StoreConfig()}))
    cache: CacheConfig = CacheConfig()
    limits: LimitsConfig = LimitsConfig()
    tracing: TracingConfig = TracingConfig()
    lineage: LineageConfig = Field(default_factory=LineageConfig)  # graphql's default: at load
    derived: DerivedConfig = DerivedConfig()
    quality: QualityConfig = QualityConfig()
    stream: StreamConfig = StreamConfig()
    log_level: Annotated[str, AfterValidator(_log_level)] = "info"
    # text | json (one object per line, with trace_id and span_id)
    log_format: Annotated[str, AfterValidator(_log_format)] = "text"
    access_log: bool = False

    @model_validator(mode="after")
    def _ports_differ(self) -> Config:
        check_ports(self.http, self.grpc)  # a SettingError: load_config names the setting
        return self


def load_config(
    path: str | Path | None = None,
    overrides: Mapping[tuple[str, ...], Any] | None = None,
    flags: Mapping[tuple[str, ...], str] | None = None,
) -> Config:
    """Build the configuration: defaults, then ``path``, then env vars, then ``overrides``
    (the flags; a None value is a flag not given). An error names the variable or the flag
    (``flags``: the flag of an override) that set the setting, and a flag's error names
    no file (it is not the file's value)."""
    name = str(path) if path is not None else "config"
    # Every command reads its config before it starts a Kafka client: librdkafka's lines
    # (through RDKAFKA_LOGGER) are rate-limited from here on, as an outage's are (logs.py).
    logs.limit_repeats(RDKAFKA_LOGGER)
    origin: dict[tuple[str, ...], str] = {}
    try:
        doc = environment(read_config_file(path), Config, aliases_in_force(), origin)
        for keys, value in (overrides or {}).items():
            if value is not None:
                set_path(doc, keys, value)
                origin.pop(keys, None)
                if keys in (flags or {}):
                    origin[keys] = (flags or {})[keys]
        resolve_store_secret_files(doc)
        resolve_secret_files(doc, Config, "")
        return Config.model_validate(doc)
    except (SettingError, ValidationError) as e:
        problem = with_origin(e, origin) if isinstance(e, SettingError) else describe(e, Config, origin)
        where = "" if problem.where.startswith("--") else f"{name}: "
        raise InvalidArgument(f"{where}{problem.where}: {problem.problem}") from None


def check_embedded_store_alone(config: Config, path: str | Path | None = None) -> None:
    """``featurestore serve`` with several workers and an in-process ClickHouse engine is
    refused before the supervisor forks: each worker would open the store's one data
    directory, and all but the first would find it locked and serve its views
    UNAVAILABLE (each worker runs with ``--workers 1``, so the store's own check, when a
    worker opens it, passes). Other commands read the same config with one process."""
    if config.workers <= 1:
        return
    for name, store in config.stores.items():
        # (a clickhouse store without a dsn is the in-process engine's: ClickHouseOptions)
        dsn = str(store.options.get("dsn", EMBEDDED_CLICKHOUSE))
        if store.kind == "clickhouse" and dsn.startswith(EMBEDDED_CLICKHOUSE):
            raise InvalidArgument(
                f"{path if path is not None else 'config'}: workers: {config.workers} with "
                f"stores.{name} ({EMBEDDED_CLICKHOUSE}): {EMBEDDED_ALONE}"
            )
