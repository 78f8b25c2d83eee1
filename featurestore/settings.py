"""The value types of configuration settings and the machinery under ``load_config``:
layering, secrets read from files, and error messages that name the setting.

A section of the configuration is a frozen stdlib dataclass whose fields use these
types (``Port``, ``Count``, ``Seconds``, ``Ratio``, ``Names``, ``Secret``) or plain
ones; pydantic validates it (``config.py``). Each type's validator raises its own
message, so an error reads ``limits.deadline_ms: expected a positive integer, got 0``
whichever layer the value came from.

Secrets: a field typed ``Secret`` (pydantic's ``SecretStr``: printed as ``**********``
in reprs, logs and errors) also accepts ``<name>_file``, a path whose content (trailing
newline stripped) is the value, so a mounted Kubernetes Secret never passes through
the environment or a config file.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import AfterValidator, BeforeValidator, SecretStr, ValidationError
from pydantic_core import PydanticCustomError
from pydantic_settings import EnvSettingsSource

from featurestore.errors import InvalidArgument

Secret = SecretStr


def _fail(message: str, value: Any) -> PydanticCustomError:
    return PydanticCustomError("setting", f"{message}, got {{value}}", {"value": repr(value)})


def _integer(value: Any) -> int:
    """An integer, from YAML or an environment variable; 1.5, 2.0 or ``true`` is
    refused rather than converted, so a limit never silently differs from what was
    written."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            pass
    raise _fail("expected an integer", value)


# The largest integer setting: grpc's channel arguments (limits.max_body_bytes, ...) and
# librdkafka's properties are C ints; a larger one crashed the start (review s55).
MAX_INTEGER = 2**31 - 1
# The longest duration: grpc takes its timeouts (grpc.*_seconds) in ms as a C int, 2^31-1
# ms (24.8 days), the bound every duration shares.
MAX_SECONDS = MAX_INTEGER / 1000


def up_to(limit: int, *, zero: bool = False) -> AfterValidator:
    """The check of an integer setting: positive (0 too, with ``zero``), at most ``limit``."""

    def check(value: int) -> int:
        if value < (0 if zero else 1):
            raise _fail("expected 0 or a positive integer" if zero else "expected a positive integer", value)
        if value > limit:
            raise _fail(f"expected at most {limit}", value)
        return value

    return AfterValidator(check)


def _port(value: int) -> int:
    if not 0 < value <= 65535:
        raise _fail("expected a positive integer up to 65535", value)
    return value


def _number(value: Any) -> float:
    if isinstance(value, bool):
        raise _fail("expected a number", value)
    try:
        real = float(value)
    except (TypeError, ValueError):
        raise _fail("expected a number", value) from None
    if not math.isfinite(real):
        raise _fail("expected a number", value)
    return real


def _duration(value: float) -> float:
    if value <= 0:
        raise _fail("expected a positive number", value)
    if value > MAX_SECONDS:
        raise _fail(f"expected at most {MAX_SECONDS:.3f} seconds (24.8 days)", value)
    return value


def _non_negative_number(value: float) -> float:
    if value < 0:
        raise _fail("expected 0 or a positive number", value)
    return value


def _ratio(value: float) -> float:
    if not 0.0 <= value <= 1.0:
        raise _fail("expected a ratio between 0 and 1", value)
    return value


def _names(value: Any) -> Any:
    """A list, or one comma-separated string (how an environment variable says it)."""
    if isinstance(value, str):
        return tuple(part.strip() for part in value.split(",") if part.strip())
    return value


def _name(value: str) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,127}", value):
        raise _fail(
            "expected a name of letters, digits and _ (at most 128 characters, not starting with a digit)",
            value,
        )
    return value


Name = Annotated[str, AfterValidator(_name)]  # as a definitions file's names
Integer = Annotated[int, BeforeValidator(_integer)]  # with up_to(n): a count of at most n
Count = Annotated[Integer, up_to(MAX_INTEGER)]
CountOrZero = Annotated[Integer, up_to(MAX_INTEGER, zero=True)]  # 0: off
Port = Annotated[int, BeforeValidator(_integer), AfterValidator(_port)]
Seconds = Annotated[float, BeforeValidator(_number), AfterValidator(_duration)]
NumberOrZero = Annotated[float, BeforeValidator(_number), AfterValidator(_non_negative_number)]
Ratio = Annotated[float, BeforeValidator(_number), AfterValidator(_ratio)]
Names = Annotated[tuple[str, ...], BeforeValidator(_names)]


class SettingError(Exception):
    """A setting that cannot be used; ``where`` is its dotted path, ``others`` the paths of
    the settings ``problem`` names besides it (the one it clashes with)."""

    def __init__(self, where: str, problem: str, others: tuple[str, ...] = ()) -> None:
        super().__init__(f"{where}: {problem}")
        self.where = where
        self.problem = problem
        self.others = others


def with_origin(error: SettingError, origin: Mapping[tuple[str, ...], str]) -> SettingError:
    """``error`` naming, beside each setting it names, the environment variable that set
    it (``FEATURESTORE_GRPC__PORT (grpc.port)``), as ``describe`` does for a bad value."""

    def named(where: str) -> str:
        var = origin.get(tuple(where.split(".")))
        return where if var is None else f"{var} ({where})"

    problem = error.problem
    for other in error.others:
        problem = problem.replace(other, named(other))
    return SettingError(named(error.where), problem)


def key(where: str, name: object) -> str:
    return f"{where}.{name}" if where else str(name)


def set_path(doc: dict[str, Any], keys: tuple[str, ...], value: Any) -> None:
    for k in keys[:-1]:
        child = doc.get(k)
        if not isinstance(child, dict):
            child = doc[k] = {}
        doc = child
    doc[keys[-1]] = value


def merge(base: dict[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    """``top`` over ``base``, mapping by mapping (a leaf of ``top`` wins)."""
    out = dict(base)
    for k, v in top.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = dict(v) if isinstance(v, Mapping) else v
    return out


def read_secret_file(path: Any, where: str) -> SecretStr:
    try:
        text = Path(str(path)).read_text(encoding="utf-8")
    except OSError as e:
        raise SettingError(where, f"cannot read the secret file: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise SettingError(
            where, f"the secret file is not UTF-8 text (at byte {e.start}: {e.reason})"
        ) from None
    return SecretStr(text.rstrip("\r\n"))


def resolve_secret_files(doc: dict[str, Any], cls: type[Any], where: str) -> None:
    """Replace every ``<secret>_file`` in ``doc`` (a section of type ``cls``) by the
    file's content under ``<secret>``, in place, section by section. A section that
    declares ``<secret>_file`` itself (it re-reads the file) keeps it."""
    hints = _hints(cls)
    for name in list(doc):
        sub = doc[name]
        if name.endswith("_file") and name not in hints:
            secret = name.removesuffix("_file")
            if secret in hints and _is_secret(hints[secret]):
                if secret in doc:
                    raise SettingError(key(where, name), f"give {secret} or {name}, not both")
                doc[secret] = read_secret_file(doc.pop(name), key(where, name))
        elif isinstance(sub, dict) and name in hints:
            section = _dataclass_of(hints[name])
            if section is not None:
                resolve_secret_files(sub, section, key(where, name))


def environment(
    doc: dict[str, Any],
    root: type[Any],
    aliases: Mapping[str, tuple[str, ...]],
    origin: dict[tuple[str, ...], str],
) -> dict[str, Any]:
    """``doc`` under the ``aliases`` (variable: setting path), under the environment of
    the settings class ``root`` (pydantic-settings' parsing: its prefix, case-insensitive,
    ``__`` between levels), ``null`` read as YAML's (``environment_nulls``); ``origin``
    notes each setting's variable."""
    short: dict[str, Any] = {}
    for var, keys in aliases.items():
        if var in os.environ:
            set_path(short, keys, os.environ[var])
            origin[keys] = var
    env = EnvSettingsSource(root)()
    environment_nulls(short, root)
    environment_nulls(env, root)
    note_origin(env, root.model_config["env_prefix"], origin)
    return merge(merge(doc, short), env)


def environment_nulls(doc: dict[str, Any], cls: type[Any]) -> None:
    """In ``doc`` (the environment's settings of a section of type ``cls``), ``null``
    (any case) means YAML's null for a setting that takes one (``X | None``, each of
    them defaulting to None: "by store kind", "none", "on port"), in place, section by
    section: ``FEATURESTORE_CACHE__FILLS_PER_ROUND_TRIP=null`` restores the default a
    file's number replaced. A setting that takes no null keeps the text."""
    hints = _hints(cls)
    for name, value in doc.items():
        hint = hints.get(name)
        if isinstance(value, dict):
            section = _dataclass_of(hint)
            if section is not None:
                environment_nulls(value, section)
        elif isinstance(value, str) and value.strip().lower() == "null" and _nullable(hint):
            doc[name] = None


def _nullable(hint: Any) -> bool:
    if typing.get_origin(hint) is Annotated:
        hint = typing.get_args(hint)[0]
    union = isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union
    return union and type(None) in typing.get_args(hint)


def _hints(cls: Any) -> dict[str, Any]:
    """A section's field types: a dataclass's, or a pydantic model's (the root)."""
    if hasattr(cls, "model_fields"):
        return {n: f.annotation for n, f in cls.model_fields.items()}
    if dataclasses.is_dataclass(cls):
        return typing.get_type_hints(cls, include_extras=True)
    return {}


def _is_secret(hint: Any) -> bool:
    return hint is SecretStr or (isinstance(hint, types.UnionType) and SecretStr in typing.get_args(hint))


def _dataclass_of(hint: Any) -> type[Any] | None:
    if typing.get_origin(hint) is Annotated:
        hint = typing.get_args(hint)[0]
    return hint if isinstance(hint, type) and dataclasses.is_dataclass(hint) else None


def describe(error: ValidationError, root: type[Any], origin: Mapping[tuple[str, ...], str]) -> SettingError:
    """The first problem of a validation error, named by the setting's path (and by
    the environment variable that set it, when one did)."""
    first = error.errors(include_url=False)[0]
    loc = tuple(str(part) for part in first["loc"])
    where = ".".join(loc) or "top level"
    if loc in origin:
        where = f"{origin[loc]} ({where})"
    kind = first["type"]
    if kind in ("extra_forbidden", "unexpected_keyword_argument"):
        known = _known_fields(root, loc[:-1])
        return SettingError(where, "unknown setting" + (f"; known: {', '.join(known)}" if known else ""))
    if kind == "setting":
        # a section's check naming one of its settings first ("url: port ..."): the
        # variable that set that one, when one did (a store's options are checked as a whole)
        option, colon, rest = first["msg"].partition(": ")
        var = origin.get((*loc, option)) if colon else None
        if var is not None:
            return SettingError(f"{var} ({where}.{option})", rest)
        return SettingError(where, first["msg"])
    if kind in ("dict_type", "dataclass_type", "model_type", "mapping_type"):
        # the type only: a store written as a bare URL may hold its password
        return SettingError(where, f"expected a mapping, got {_type_name(first['input'])}")
    shown = first.get("input")
    # A mapping may hold secrets, and so may a value whose setting names one.
    secret = any(word in loc[-1] for word in _SECRET_WORDS) if loc else False
    got = "" if isinstance(shown, dict) or secret else f", got {shown!r}"
    return SettingError(where, f"{first['msg'][0].lower()}{first['msg'][1:]}{got}")


_SECRET_WORDS = ("password", "token", "secret", "key")


def _type_name(value: Any) -> str:
    names = {str: "a string", list: "a list", int: "an integer", float: "a number", bool: "a boolean"}
    return "nothing" if value is None else names.get(type(value), type(value).__name__)


def _known_fields(root: type[Any], loc: tuple[str, ...]) -> list[str]:
    cls: Any = root
    for part in loc:
        cls = _dataclass_of(_hints(cls).get(part))
        if cls is None:
            return []
    return sorted(_hints(cls))


def store_options(cls: type[Any], options: Mapping[str, Any]) -> dict[str, Any]:
    """A store's options (``stores.<name>``, typed by the kind's options dataclass
    ``cls``) with the integers and booleans an environment variable gives as text
    (``FEATURESTORE_STORES__R__POOL_SIZE=8``, ``..._CLUSTER=false``) converted: the
    options mapping is free-form, so pydantic leaves them strings, and ``"false"`` is
    true to Python. Other text stays for the dataclass to refuse, naming the option."""
    types_of = {f.name: f.type for f in dataclasses.fields(cls)}
    out = dict(options)
    for name, value in options.items():
        if not isinstance(value, str):
            continue
        kind = types_of.get(name)
        if kind in (int, "int") and value.strip().lstrip("-").isdigit():
            out[name] = int(value.strip())
        elif kind in (bool, "bool") and value.strip().lower() in ("true", "false"):
            out[name] = value.strip().lower() == "true"
    return out


def read_config_file(path: str | Path | None) -> dict[str, Any]:
    """The YAML configuration file as a mapping ({} without one)."""
    if path is None:
        return {}
    try:
        loaded = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as e:
        raise InvalidArgument(f"config {path}: {e}") from e
    except UnicodeDecodeError as e:
        raise InvalidArgument(f"config {path}: not UTF-8 text (at byte {e.start}: {e.reason})") from None
    except yaml.YAMLError as e:
        raise InvalidArgument(f"config {path}: {yaml_problem(e)}") from None
    if loaded is not None and not isinstance(loaded, dict):
        raise SettingError("top level", "expected a mapping")
    return loaded or {}


def yaml_problem(e: yaml.YAMLError) -> str:
    """What is wrong and where, never the source line PyYAML quotes (it may hold a
    password)."""
    if isinstance(e, yaml.MarkedYAMLError):
        parts = [
            f"{text} at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else text
            for text, mark in ((e.context, e.context_mark), (e.problem, e.problem_mark))
            if text
        ]
        return "invalid YAML: " + ("; ".join(parts) or "syntax error")
    if isinstance(e, yaml.reader.ReaderError):
        return f"invalid YAML: an unreadable character at position {e.position}"
    return f"invalid YAML ({type(e).__name__})"


def note_origin(
    doc: Mapping[str, Any], prefix: str, origin: dict[tuple[str, ...], str], loc: tuple[str, ...] = ()
) -> None:
    """Record, for each setting in ``doc`` (read from the environment), the variable that
    set it, so an error names it."""
    for k, v in doc.items():
        if isinstance(v, Mapping):
            note_origin(v, prefix, origin, (*loc, k))
        else:
            origin[(*loc, k)] = prefix + "__".join((*loc, k)).upper()
