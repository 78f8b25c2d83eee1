"""featurestore.client runs without the server's dependencies: a child Python whose
import system refuses them (and the optional pyarrow, pandas, numpy, opentelemetry)
imports the client and joins over both transports against a real server; the CLI's
``featurestore join`` there says in one line that it needs the full install."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from tests.support import ROOT, ServerProcess

SERVER_ONLY = [
    "fastapi", "starlette", "uvicorn", "uvloop", "httptools", "redis", "hiredis", "clickhouse_connect",
    "chdb", "aetcd", "confluent_kafka", "neo4j", "strawberry", "numba", "llvmlite", "msgspec", "yaml",
    "prometheus_client", "pyarrow", "numpy", "pandas", "opentelemetry", "grpc_health", "grpc_reflection",
    "featurestore.api", "featurestore.join", "featurestore.config", "featurestore.errors", "lineage",
]  # fmt: skip

CHILD = textwrap.dedent(
    """
    import importlib.abc, sys

    BLOCKED = {blocked!r}

    class Refuse(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if any(name == b or name.startswith(b + ".") for b in BLOCKED):
                raise ImportError(f"{{name}} is not installed here")
            return None

    sys.meta_path.insert(0, Refuse())
    from featurestore.client import FeatureClient, Status

    for address in ({http!r}, {grpc!r}):
        with FeatureClient(address, deadline=10) as client:  # not the 1 s default: a loaded CI machine (CLIENT_DEADLINE_S)
            r = client.join({{"user_id": [17, -1]}}, ["user_profile:age"])
        assert r["age"].statuses == [Status.PRESENT, Status.NOT_FOUND], r
        print(address.split(":")[0], r.to_dict())
    loaded = sorted(m for m in sys.modules if any(m == b or m.startswith(b + ".") for b in BLOCKED))
    assert not loaded, loaded
    """
)


CLI = textwrap.dedent(
    """
    import importlib.abc, sys

    BLOCKED = {blocked!r}

    class Missing(importlib.abc.MetaPathFinder):  # as a package that is not installed
        def find_spec(self, name, path=None, target=None):
            if any(name == b or name.startswith(b + ".") for b in BLOCKED):
                raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
            return None

    sys.meta_path.insert(0, Missing())
    from featurestore.cli import main

    sys.exit(main(["join", "--grpc", {grpc!r}, "--entity", "user_id=17", "--features", "user_profile:age"]))
    """
)


def test_featurestore_join_with_the_clients_lean_install_says_what_it_needs_in_one_line(
    server: ServerProcess,
) -> None:
    """docs/client.md: the CLI needs the full install (its other commands import the
    server's packages); with the client's alone it says so, as every CLI error, in one
    line with exit 2, not a traceback."""
    # the packages `pip install --no-deps featurestore` leaves out, not this distribution's modules
    missing = [m for m in SERVER_ONLY if m.split(".")[0] not in ("featurestore", "lineage")]
    code = CLI.format(blocked=missing, grpc=server.grpc_target)
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60, check=False
    )
    assert out.returncode == 2, out.stderr
    (line,) = out.stderr.splitlines()
    assert line.startswith(
        "error: FAILED_PRECONDITION: the featurestore command needs featurestore's full install"
    )
    assert line.endswith("pip install featurestore") and "no module '" in line


def test_the_client_imports_and_joins_without_any_server_dependency(server: ServerProcess) -> None:
    code = CHILD.format(blocked=SERVER_ONLY, http=server.url, grpc=f"grpc://{server.grpc_target}")
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60, check=False
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert [line.split()[0] for line in lines] == ["http", "grpc"]
    assert lines[0].split(" ", 1)[1] == lines[1].split(" ", 1)[1]  # the same values either way
