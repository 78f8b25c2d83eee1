"""What every command module shares: the type of the subcommand registry."""

from __future__ import annotations

import argparse
from typing import TypeAlias

# Each command module has ``register(sub)`` adding its subcommands to this.
Subcommands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
