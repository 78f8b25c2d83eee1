"""``featurestore`` command line. Each command module registers its own subcommands."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from featurestore.cli import data, join, lineage, registry, serve
from featurestore.cli.join import render_table
from featurestore.errors import FeatureStoreError

__all__ = ["main", "render_table"]

COMMAND_MODULES = (serve, join, data, registry, lineage)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parser().parse_args(argv)
    logging.basicConfig(
        # until a command has read its config (whose log_level then applies)
        level=(
            getattr(args, "log_level", None) or os.environ.get("FEATURESTORE_LOG_LEVEL") or "info"
        ).upper(),
        format="%(asctime)s %(levelname)s %(name)s [%(process)d] %(message)s",
    )
    try:
        return int(args.func(args, argv) or 0)
    except FeatureStoreError as e:
        print(f"error: {e.message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="featurestore", description="Online feature serving: serve, define, load, trace."
    )
    sub = p.add_subparsers(dest="command", required=True)
    for module in COMMAND_MODULES:
        module.register(sub)
    return p
