"""Two commits side by side: the same Redis, the same data, servers of each in turn.

For a change whose cost or gain is a few percent: one Redis (a free port) with the
demo's two views materialized, then, for ``--rounds`` rounds, one server of each source
tree (the order alternating by round), each warmed for 2 s and then driven by wrk
(``benchmarks/wrk_keys.lua``, uniform keys) for ``--duration`` seconds; the server's
CPU per request (``/proc``, the whole process tree) is the steady figure, QPS moves with
other tenants. ``--old`` is checked out into a temporary git worktree (removed at the
end); ``--new`` is the working tree (default: this checkout, uncommitted changes and all).
Both servers read what this checkout defines and materializes (the demo's definitions,
its materialize command, a registry of its format): a change to those is not A/B-able
here.

    python -m benchmarks.ab --old HEAD~1 [--batch 100] [--cache off] [--rounds 4]
                            [--duration 8] [--concurrency 32] [--out FILE.md]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from benchmarks.stack import ROOT, config, materialize, redis, server, tree_cpu, wrk


@contextmanager
def worktree(rev: str) -> Iterator[Path]:
    """``rev`` checked out in a temporary worktree (a run killed outright leaves it
    registered: ``git worktree prune``)."""
    path = Path(tempfile.mkdtemp(prefix="ab-"))
    subprocess.run(["git", "worktree", "add", "-q", "--detach", str(path), rev], cwd=ROOT, check=True)
    try:
        yield path
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(path)], cwd=ROOT, check=False)
        shutil.rmtree(path, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--old", required=True, help="a git revision")
    ap.add_argument("--new", type=Path, default=ROOT, help="a source tree (default: this checkout)")
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--cache", choices=("on", "off"), default="off")
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--duration", type=float, default=8.0)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--out", type=Path)
    a = ap.parse_args()
    # named before the run: a commit made meanwhile does not move ``--old HEAD``
    old_rev = subprocess.run(["git", "rev-parse", "--short", a.old], cwd=ROOT, capture_output=True, text=True)
    a.old = old_rev.stdout.strip() or a.old
    rows: dict[str, list[tuple[float, float, float]]] = {"old": [], "new": []}
    with tempfile.TemporaryDirectory() as tmp, worktree(a.old) as old, redis(Path(tmp)) as url:
        work = Path(tmp)
        cfg = config(work, url, "ab", a.cache == "on")
        materialize(work, cfg)
        trees = {"old": old, "new": a.new.resolve()}
        for r in range(a.rounds):
            for name in ("old", "new") if r % 2 == 0 else ("new", "old"):
                tree = trees[name]  # its source first on sys.path: run from it, on PYTHONPATH
                with server(work, cfg, a.workers, env={"PYTHONPATH": str(tree)}, cwd=tree) as s:
                    url_join = f"http://127.0.0.1:{s['http']}/v1/feature/join"
                    wrk(url_join, a.batch, a.concurrency, 2)
                    c0 = tree_cpu(s["pid"])
                    w = wrk(url_join, a.batch, a.concurrency, a.duration)
                    cpu_us = (tree_cpu(s["pid"]) - c0) / w["requests"] * 1e6
                rows[name].append((w["qps"], cpu_us, w["p99_ms"]))
                print(f"round {r} {name}: {w['qps']:,.0f} QPS, {cpu_us:.0f} µs CPU/request", flush=True)
    med = {k: [statistics.median(x[i] for x in v) for i in range(3)] for k, v in rows.items()}
    new_rev = subprocess.run(
        ["git", "describe", "--always", "--dirty"], cwd=a.new, capture_output=True, text=True
    )
    lines = [
        f"A/B run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: `python -m benchmarks.ab "
        f"{' '.join(sys.argv[1:])}` (old {a.old}, new {new_rev.stdout.strip()}); batch {a.batch}, cache "
        f"{a.cache}, {a.workers} worker(s), wrk -c{a.concurrency}, {a.rounds} interleaved rounds of "
        f"{a.duration:g} s, medians",
        "",
        "| tree | QPS | server CPU µs/request | p99 ms |",
        "|---|---:|---:|---:|",
        *(f"| {k} | {q:,.0f} | {c:.0f} | {p:.2f} |" for k, (q, c, p) in med.items()),
        "",
        f"new vs old: QPS {med['new'][0] / med['old'][0] - 1:+.1%}, CPU per request "
        f"{med['new'][1] / med['old'][1] - 1:+.1%}",
    ]
    print("\n".join(lines))
    if a.out:
        a.out.write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
