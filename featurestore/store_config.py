"""The ``stores:`` section of the configuration: online stores by name, each a kind
(memory, redis, clickhouse), the kind's options and whether the cache goes in front.
The options are free-form here (each kind's options dataclass checks its own, in
``sources/``); only the secrets among them (``password``, or ``password_file``) are
handled here, so they are never shown."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Annotated, Any

from pydantic import AfterValidator, SecretStr
from pydantic_core import PydanticCustomError

from featurestore.addresses import check_address, check_redis_query
from featurestore.settings import SettingError, _fail, key, read_secret_file


def _store_kind(kind: str) -> str:
    if kind not in STORE_KINDS:
        raise _fail(f"unknown store kind {kind!r}; use {', '.join(STORE_KINDS)}", kind)
    return kind


STORE_KINDS = ("memory", "redis", "clickhouse")
# Store options that are secrets: given inline, as `<name>_file`, or in the environment.
STORE_SECRETS = ("password",)


@dataclass(frozen=True, slots=True)
class StoreConfig:
    kind: Annotated[str, AfterValidator(_store_kind)] = "memory"
    # kind-specific options (docs/storage.md); secrets among them are SecretStr
    options: Annotated[Mapping[str, Any], AfterValidator(MappingProxyType)] = field(
        default_factory=lambda: MappingProxyType({})
    )
    cache: bool = True  # the LRU cache in front (ignored for memory)


def store_doc(doc: Any) -> Any:
    """A store as written (`{kind: redis, url: ..., cache: false}`): kind, cache, and
    the rest as the kind's options."""
    if isinstance(doc, StoreConfig) or not isinstance(doc, Mapping):
        return doc
    rest = dict(doc)
    out: dict[str, Any] = {"options": {}}
    for name in ("kind", "cache"):
        if name in rest:
            out[name] = rest.pop(name)
    for name in STORE_SECRETS:
        secret = rest.get(name)
        if isinstance(secret, str):
            rest[name] = SecretStr(secret)
        elif secret is not None and not isinstance(secret, SecretStr):
            # Never the value: it is a secret. Not a number made text either, as the other
            # secrets: YAML reads `password: 0123` as 83.
            raise PydanticCustomError(
                "setting", f"{name}: expected a string, quoted in YAML (its value is not shown)"
            )
    _check_address(out.get("kind"), rest)
    out["options"] = MappingProxyType(rest)
    if "kind" not in out:
        # the keys only: the values may hold a password (inline, or in a URL)
        keys = ", ".join(sorted(str(k) for k in doc)) or "none"
        raise PydanticCustomError(
            "setting", f"expected a mapping with 'kind' (memory, redis or clickhouse); its keys: {keys}"
        )
    _check_options(out["kind"], rest)
    return out


# The option holding each kind's server address, and the schemes that name a host and port
_ADDRESS = {"redis": "url", "clickhouse": "dsn"}
_NETWORK_SCHEMES = ("redis", "rediss", "http", "https")


def _check_address(kind: Any, options: Mapping[str, Any]) -> None:
    """A bad host or port (or a Redis URL's query option) fails the config's load, naming
    the store (load_config adds the file): ``stores.default: url: port 'notaport' is not
    a number``."""
    option = _ADDRESS.get(kind) if isinstance(kind, str) else None
    url = options.get(option) if option else None
    if isinstance(url, str):
        try:
            if url.partition("://")[0].lower() in _NETWORK_SCHEMES:
                check_address(url, str(option))
            if kind == "redis":
                check_redis_query(url, str(option))
        except ValueError as e:
            raise PydanticCustomError("setting", "{problem}", {"problem": str(e)}) from None


def _check_options(kind: Any, options: dict[str, Any]) -> None:
    """The kind's typed options (``pool_size``, ``connect_timeout_ms``, ...) fail the
    config's load as its address does, so ``describe`` names the variable that set one:
    they failed only when the store was built (``materialize``: after its first view).
    The options classes are imported for a store of their kind (redis-py, pyarrow)."""
    try:
        if kind == "redis":
            from featurestore.sources.redis_options import RedisOptions

            RedisOptions.from_mapping(options)
        elif kind == "clickhouse":
            from featurestore.sources.clickhouse.options import ClickHouseOptions

            ClickHouseOptions.from_mapping(options)
    except (TypeError, ValueError) as e:
        raise PydanticCustomError("setting", "{problem}", {"problem": str(e)}) from None


def resolve_store_secret_files(doc: dict[str, Any]) -> None:
    """Every store's ``<secret>_file`` in the configuration ``doc`` replaced by the
    file's content (a SecretStr)."""
    stores = doc.get("stores")
    if isinstance(stores, dict):
        for store_name, store in stores.items():
            if isinstance(store, dict):
                _store_secret_files(store, key("stores", store_name))


def _store_secret_files(store: dict[str, Any], where: str) -> None:
    for name in STORE_SECRETS:
        file_key = f"{name}_file"
        if file_key in store:
            if name in store:
                raise SettingError(key(where, file_key), f"give {name} or {file_key}, not both")
            store[name] = read_secret_file(store.pop(file_key), key(where, file_key))
