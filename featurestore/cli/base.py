"""What every command module shares: the type of the subcommand registry, and the
argparse types of numeric flags (a value out of range is refused with the usage, naming
the flag, exit 2, before the command reads a config or opens a connection)."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from typing import TypeAlias

# Each command module has ``register(sub)`` adding its subcommands to this.
Subcommands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def integer(low: int, high: int) -> Callable[[str], int]:
    """An argparse type: an integer from ``low`` to ``high``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or not low <= value <= high:
            raise argparse.ArgumentTypeError(f"expected an integer from {low} to {high}, got {text!r}")
        return value

    return parse


def port(*, off: bool = False) -> Callable[[str], int]:
    """An argparse type: a TCP port, 1 to 65535 (``off``: 0 too, no listener)."""
    least = 0 if off else 1
    check = integer(least, 65535)

    def parse(text: str) -> int:
        try:
            return check(text)
        except argparse.ArgumentTypeError:
            zero = " (0: off)" if off else ""
            raise argparse.ArgumentTypeError(
                f"expected a port from {least} to 65535{zero}, got {text!r}"
            ) from None

    return parse


def seconds(text: str) -> float:
    """An argparse type: a number of seconds, 0 or more and finite (not nan or inf)."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 <= value < math.inf:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, 0 or more, got {text!r}")
    return value


def start_metrics(port: int, host: str) -> None:
    """Serve ``/metrics`` on ``--metrics-host``:``--metrics-port`` (``exporter``); one that
    cannot listen (the port in use, a host not this machine's) is FAILED_PRECONDITION
    naming both flags, as ``serve`` names its listener (OSError's text named neither)."""
    from featurestore import exporter
    from featurestore.errors import FailedPrecondition

    try:
        exporter.start(port, host)
    except OSError as e:
        raise FailedPrecondition(
            f"--metrics-host {host} --metrics-port {port}: cannot listen on {host}:{port}: {e.strerror or e}"
        ) from None
