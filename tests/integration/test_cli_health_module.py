"""The image's HEALTHCHECK, ``python -m featurestore.cli.health``, runs every 10 s: it
answers as ``featurestore healthcheck`` does, and loads neither numpy nor pyarrow nor
any other command module (``featurestore healthcheck`` imported them all: ~0.45 s of CPU
a check). A real server, the Dockerfile's command (``-X importtime`` lists what it
imports)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

from tests.support import ROOT, ServerProcess, free_port

HEAVY = re.compile(r"^(numpy|pyarrow|pandas|grpc|featurestore\.cli\.(?!health$|base$)\w+)(\.|$)")


def dockerfile_healthcheck() -> list[str]:
    """The Dockerfile's ``HEALTHCHECK ... CMD [...]``, its interpreter this one."""
    m = re.search(r"^HEALTHCHECK .*\\\n\s*CMD (\[.*\])$", (ROOT / "Dockerfile").read_text(), re.M)
    assert m is not None, "the Dockerfile has no HEALTHCHECK CMD [...]"
    command: list[str] = json.loads(m.group(1))
    assert command[0] == "python", command
    return [sys.executable, *command[1:]]


def health_module(*args: str, env: dict[str, str]) -> tuple[int, list[str], str]:
    """Exit code, the modules the run imported, and its stderr without the import lines."""
    interpreter, *command = dockerfile_healthcheck()
    out = subprocess.run(
        [interpreter, "-X", "importtime", *command, *args],
        capture_output=True, text=True, timeout=60, cwd=ROOT, env={**os.environ, **env},
    )  # fmt: skip
    imported, rest = [], []
    for line in out.stderr.splitlines():
        if line.startswith("import time:"):
            imported.append(line.rsplit("|", 1)[1].strip())
        else:
            rest.append(line)
    return out.returncode, imported, "\n".join(rest)


def test_the_healthcheck_module_says_ready_without_loading_numpy_pyarrow_or_other_commands(
    server: ServerProcess,
) -> None:
    code, imported, stderr = health_module(
        "--timeout", "5", env={"FEATURESTORE_HTTP__PORT": str(server.http_port)}
    )
    assert code == 0, stderr
    assert "featurestore.config" in imported  # it did read the configuration
    assert [m for m in imported if HEAVY.match(m)] == []


def test_the_healthcheck_module_says_not_ready_with_exit_1_when_no_server_answers() -> None:
    code, imported, stderr = health_module(env={"FEATURESTORE_HTTP__PORT": str(free_port())})
    assert code == 1 and "not ready: http://127.0.0.1:" in stderr
    assert [m for m in imported if HEAVY.match(m)] == []


def test_importing_the_cli_health_module_imports_no_numpy_or_pyarrow() -> None:
    probe = (
        "import sys, featurestore.cli.health; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('numpy', 'pyarrow')))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
