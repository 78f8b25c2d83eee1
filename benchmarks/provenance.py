"""What a benchmark ran on: the machine, and the source tree as it was when the run
started (servers load the code at start, so a commit read when the report is written
may name code the run never loaded)."""

from __future__ import annotations

import platform
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _cmd(args: list[str], cwd: Path | None = None, strip: bool = True) -> str:
    try:
        out = subprocess.run(args, capture_output=True, text=True, timeout=10, cwd=cwd).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    return out.strip() if strip else out


# What the servers and the benchmarks load: results written by an earlier step of
# `make bench` (benchmarks/results/, RESULTS.md) are not the source of a run.
SOURCE_PATHS = (
    "featurestore",
    "lineage",
    "benchmarks/*.py",
    "benchmarks/*.lua",
    "pyproject.toml",
    "constraints.txt",
)


def source_state(root: Path = ROOT) -> str:
    """``commit <short sha>``, plus the changed source files when the tree differs from it
    (``SOURCE_PATHS``): call this when the run starts, before any server loads the code."""
    commit = _cmd(["git", "rev-parse", "--short", "HEAD"], root)
    if commit in ("", "?"):
        return "source tree unknown (not a git checkout)"
    status = _cmd(["git", "status", "--porcelain", "--", *SOURCE_PATHS], root, strip=False)
    changed = [ln[3:] for ln in status.splitlines() if ln.strip()]
    if not changed:
        return f"commit {commit} (clean tree at the start of the run)"
    shown = ", ".join(changed[:5]) + (f" and {len(changed) - 5} more" if len(changed) > 5 else "")
    return f"commit {commit} plus uncommitted changes at the start of the run ({shown})"


def machine(source: str | None = None) -> str:
    """The CPU, memory, kernel, Python, Redis, and ``source`` (``source_state()`` taken when
    the run started; read now when not given)."""
    model = next(
        (ln.split(":", 1)[1].strip() for ln in _cmd(["lscpu"]).splitlines() if ln.startswith("Model name")),
        "?",
    )
    mem = next(
        (ln.split()[1] for ln in Path("/proc/meminfo").read_text().splitlines() if ln.startswith("MemTotal")),
        "0",
    )
    return (
        f"{model}, {_cmd(['nproc'])} vCPU, {int(mem) // 1024 // 1024} GiB RAM, Linux {platform.release()}; "
        f"Python {platform.python_version()}; {_cmd(['redis-server', '--version']).split(' sha=')[0]}; "
        f"featurestore {source or source_state()}"
    )


def started() -> str:
    """When a run starts and on what (``run_line`` completes it when the report is written)."""
    return f"{_utc()} UTC on {source_state()}"


def run_line(start: str) -> str:
    """``* Run: <start>; ended <now>.``: the line a report names its run by."""
    return f"* Run: {start}; ended {_utc()} UTC."


def _utc() -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.gmtime())
