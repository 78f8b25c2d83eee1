"""``featurestore`` command line. Each command module registers its own subcommands.

The command modules are imported when the parser is built, not with this package:
``python -m featurestore.cli.health`` (the image's health check, every 10 s) imports
this package first, and the command modules pull in numpy and pyarrow (~0.45 s of CPU).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import logging
import os
import select
import signal
import socket
import sys
from typing import Any

import featurestore
from featurestore.client.errors import FeatureServiceError  # stdlib only: the client's error types
from featurestore.errors import FeatureStoreError, InvalidArgument

__all__ = ["main", "render_table"]

COMMAND_MODULES = ("serve", "join", "data", "registry", "lineage", "stream", "check", "health")


def __getattr__(name: str) -> Any:
    if name == "render_table":  # the join table, imported with its command module
        from featurestore.cli.join import render_table

        return render_table
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:  # (the client's lean install, docs/client.md, has no opentelemetry, pyarrow, ...)
        from featurestore.logconfig import configure_logging

        command_line = parser()
    except ModuleNotFoundError as e:
        line = (
            f"error: FAILED_PRECONDITION: the featurestore command needs featurestore's full install, not the "
            f"client's alone (no module {e.name!r}): pip install featurestore"
        )
        if not _to_supervisor(line):
            print(line, file=sys.stderr)
        return 2
    args = command_line.parse_args(argv)
    logging.basicConfig()
    try:
        # until a command has read its config (whose log_level and log_format then apply)
        configure_logging(
            _first_log_level(args),
            "json" if os.environ.get("FEATURESTORE_LOG_FORMAT", "").strip().lower() == "json" else "text",
        )
        code = int(args.func(args, argv) or 0)
        sys.stdout.flush()  # here, where a reader gone is caught, not in Python's flush at exit
        return code
    except KeyboardInterrupt:
        return 130
    except Exception as e:
        if isinstance(e, BrokenPipeError) and _stdout_closed():
            return _reader_gone()
        message = operator_error(e)
        if message is None:
            raise  # a bug: the traceback is what its report needs
        # one line, however the library wrapped it (a YAML error spans four)
        line = "error: " + "; ".join(p.strip() for p in message.splitlines() if p.strip())
        if not _to_supervisor(line):
            print(line, file=sys.stderr)
        return int(getattr(args, "failure_exit", 2))  # (healthcheck: 1, Docker reserves 2)


def _stdout_closed() -> bool:
    """Whether stdout is a pipe whose reader has gone (``featurestore join ... | head``):
    a BrokenPipeError of a socket (a server's) is an operator error instead."""
    try:
        poll = select.poll()
        poll.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & select.POLLERR for _, events in poll.poll(0))
    except (OSError, ValueError, AttributeError):  # no file descriptor (a test's capture)
        return False


def _reader_gone() -> int:
    """Exit quietly as a Unix tool that SIGPIPE ends does (128 + 13, no message: the
    reader that went, ``head``, had what it wanted). The output left in stdout's buffer
    goes to /dev/null: Python's flush at exit would fail again, with a message."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return 128 + signal.SIGPIPE


def _first_log_level(args: argparse.Namespace) -> str:
    """The log level until a command has read its config: ``--log-level``, else
    ``$FEATURESTORE_LOG_LEVEL``, else info. An unknown one is refused naming where it
    came from (logging's ValueError was a traceback, before the config's own check, and
    commands without a config have none)."""
    from featurestore.config import LOG_LEVELS  # (loaded with logconfig already)

    for given, origin in (
        (getattr(args, "log_level", None), "--log-level"),
        (os.environ.get("FEATURESTORE_LOG_LEVEL"), "FEATURESTORE_LOG_LEVEL"),
    ):
        if given:
            if given.strip().lower() not in LOG_LEVELS:
                raise InvalidArgument(f"{origin} {given!r}: unknown log level; use {', '.join(LOG_LEVELS)}")
            return given.strip().lower()
    return "info"


def _to_supervisor(line: str) -> bool:
    """A supervised worker that has not served yet hands its error line to the supervisor,
    which prints the first worker's only (``supervisor.py``)."""
    if "FEATURESTORE_READY_FD" not in os.environ:  # supervisor.READY_FD_ENV, without its imports
        return False
    from featurestore.supervisor import report_failure

    return report_failure(line)


def operator_error(e: Exception) -> str | None:
    """``CODE: message``, the one line an operator acts on for a failure outside the
    program: bad input, config or definitions, a file, the network, a server's or a
    backend's answer; CODE is the API's status name. None for anything else (a bug keeps
    its traceback)."""
    if isinstance(e, FeatureStoreError):
        return f"{e.code.value}: {e.message}"
    if isinstance(e, OSError):  # files, sockets: "[Errno 2] No such file or directory: 'x.yaml'"
        text = f"{e.strerror or e}: {e.filename}" if e.filename else str(e) or type(e).__name__
        return f"{_os_error_code(e)}: {text}"
    if isinstance(e, FeatureServiceError):
        return str(e)  # "CODE: message": the server's answer, or UNAVAILABLE after the client's retries
    library = _backend_library(e)
    if library is not None:
        code = _kafka_code(e) if library == "confluent_kafka" else "UNAVAILABLE"
        return f"{code}: {library}: {type(e).__name__}: {_backend_text(e)}".splitlines()[0]
    # the lineage graph's (a Bolt server down: stream run, materialize with a graph
    # lineage sink); its module is loaded when one was raised (lineage imports featurestore)
    graph = sys.modules.get("lineage.graph.base")
    if graph is not None and isinstance(e, graph.GraphUnavailable):
        return f"UNAVAILABLE: lineage graph: {e}".splitlines()[0]
    return None


# Kafka errors of the client's own settings or credentials, by their code's name; any
# other is the broker's or the network's (UNAVAILABLE).
_KAFKA_CODES = {
    "_INVALID_ARG": "INVALID_ARGUMENT",
    "_SSL": "INVALID_ARGUMENT",
    "_AUTHENTICATION": "UNAUTHENTICATED",
    "SASL_AUTHENTICATION_FAILED": "UNAUTHENTICATED",
    "TOPIC_AUTHORIZATION_FAILED": "PERMISSION_DENIED",
    "GROUP_AUTHORIZATION_FAILED": "PERMISSION_DENIED",
    "CLUSTER_AUTHORIZATION_FAILED": "PERMISSION_DENIED",
    "TRANSACTIONAL_ID_AUTHORIZATION_FAILED": "PERMISSION_DENIED",
}


def _kafka_code(e: Exception) -> str:
    error: Any = e.args[0] if e.args else None
    name = error.name() if callable(getattr(error, "name", None)) else ""
    return _KAFKA_CODES.get(name, "UNAVAILABLE")


def _os_error_code(e: OSError) -> str:
    if isinstance(e, FileNotFoundError | NotADirectoryError | IsADirectoryError):
        return "NOT_FOUND"
    if isinstance(e, PermissionError):
        return "PERMISSION_DENIED"
    if isinstance(e, ConnectionError | TimeoutError | socket.gaierror):
        return "UNAVAILABLE"
    return "FAILED_PRECONDITION"


# Libraries whose exceptions mean an unreachable or refusing backend (redis, etcd,
# ClickHouse, Kafka, Neo4j, gRPC), not a bug of this program.
_BACKENDS = ("redis", "aetcd", "clickhouse_connect", "chdb", "confluent_kafka", "neo4j", "grpc", "httpx")


def _backend_library(e: Exception) -> str | None:
    """The backend library ``e`` comes from, by its package (None: none of them)."""
    package = type(e).__module__.split(".")[0]
    if package in _BACKENDS:
        return package
    # confluent-kafka's errors are its C module's (cimpl.KafkaException), their subclasses
    # its own; the module is loaded when one was raised (no import of it for a bug's report)
    kafka = sys.modules.get("confluent_kafka")
    if kafka is not None and isinstance(e, kafka.KafkaException):
        return "confluent_kafka"
    return None


def _backend_text(e: Exception) -> str:
    """``e``'s text; a Kafka error's code name and message, not KafkaError{code=...,val=...};
    an httpx error without text (a timeout's) names its request instead."""
    error: Any = e.args[0] if e.args else None
    if callable(getattr(error, "name", None)) and callable(getattr(error, "str", None)):  # a KafkaError
        return f"{error.name()}: {error.str()}"
    text = str(e)
    if not text:
        try:
            request = e.request  # type: ignore[attr-defined]  # httpx.RequestError's (raises when unset)
        except (AttributeError, RuntimeError):
            return text
        text = f"{request.method} {request.url}"
    return text


def version() -> str:
    try:
        return importlib.metadata.version("featurestore")
    except importlib.metadata.PackageNotFoundError:  # a source tree that was never installed
        return featurestore.__version__


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="featurestore", description="Online feature serving: serve, define, load, trace."
    )
    p.add_argument("--version", action="version", version=f"featurestore {version()}")
    sub = p.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(f"featurestore.cli.{name}").register(sub)
    return p
