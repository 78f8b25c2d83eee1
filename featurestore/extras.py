"""Optional backends: which extra of the ``featurestore`` distribution brings each one.

The core install serves memory and Redis stores from a file registry. Every other
backend is an extra (``pyproject.toml``), imported only when a config asks for it;
``require`` turns a missing one into an error that names the extra to install and the
setting that asked for it, instead of an ``ImportError`` traceback.
"""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

from featurestore.errors import FailedPrecondition

# module whose import proves the extra is installed -> extra name
EXTRA_OF = {
    "clickhouse_connect": "clickhouse",
    "chdb": "embedded",
    "aetcd": "etcd",
    "confluent_kafka": "kafka",
    "neo4j": "neo4j",
    "strawberry": "graphql",
    "opentelemetry.exporter.otlp.proto.grpc.trace_exporter": "otlp",
    "openlineage.client": "openlineage",
    "httpx": "client",
    "tenacity": "client",
}


class MissingExtra(FailedPrecondition):
    """A configured backend whose Python package is not installed."""

    def __init__(self, extra: str, module: str, wanted_by: str) -> None:
        super().__init__(
            f"{wanted_by} needs the {extra!r} extra, which is not installed "
            f"(no module {module!r}): pip install 'featurestore[{extra}]'",
            details=[{"extra": extra, "module": module, "setting": wanted_by}],
        )
        self.extra = extra
        self.module = module


def require(module: str, wanted_by: str, extra: str = "") -> ModuleType:
    """Import ``module`` (a key of ``EXTRA_OF``) or raise ``MissingExtra`` naming its extra
    (or ``extra``, one that brings it too and all else ``wanted_by`` needs) and
    ``wanted_by``, the setting or command that needs it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingExtra(extra or EXTRA_OF[module], module, wanted_by) from None


def installed(module: str) -> bool:
    """Whether ``module`` (a key of ``EXTRA_OF``) can be imported, without importing it."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a missing parent package; a module without a spec
        return False
