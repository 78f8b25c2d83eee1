"""Every test file, benchmark and docs page that the code, the docs and the deploy files
name exists: a comment saying "checked by tests/unit/x.py" must point at a real check."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
NAMED = re.compile(r"\b((?:tests|benchmarks|docs)/[A-Za-z0-9_/.-]+\.(?:py|md))\b")
WHERE = ["featurestore", "lineage", "docs", "deploy", "benchmarks", "README.md", "Dockerfile", "Makefile"]


def _files() -> list[Path]:
    out: list[Path] = []
    for where in WHERE:
        path = ROOT / where
        if path.is_file():
            out.append(path)
        else:
            out.extend(
                p
                for p in path.rglob("*")
                if p.is_file() and p.suffix in (".py", ".md", ".yml", ".yaml", ".sh", ".json", ".toml")
            )
    return out


def test_every_named_test_benchmark_and_docs_file_exists() -> None:
    missing = sorted(
        f"{path.relative_to(ROOT)}: {name}"
        for path in _files()
        for name in set(NAMED.findall(path.read_text(encoding="utf-8", errors="replace")))
        if not (ROOT / name).exists() and not name.startswith("benchmarks/results/")  # written by a run
    )
    assert missing == []
